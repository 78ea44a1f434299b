"""map_in_chunks: per-example functions over a batch a few examples at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from finedual_jax import chunks


A = jax.random.normal(jax.random.key(1), (5, 3))


def _fn(index, x, pair):
  b, c = pair
  return {'y': jnp.tanh(x @ A) + b[:, None] * c, 'index': jnp.broadcast_to(index, x.shape[:1])}


def _inputs():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  return jax.random.normal(k1, (7, 5)), (jax.random.normal(k2, (7,)),
                                         jax.random.normal(k3, (7, 3)))


@pytest.mark.parametrize('chunk', [0, 1, 2, 3, 7, 9])  # 2, 3: the last chunk is padded.
def test_outputs_are_the_whole_batchs_and_each_chunk_knows_its_number(chunk):
  x, pair = _inputs()
  out = chunks.map_in_chunks(_fn, chunk, x, pair)
  np.testing.assert_allclose(out['y'], _fn(0, x, pair)['y'], rtol=1e-6)
  expected = np.arange(7) // chunk if 0 < chunk < 7 else np.zeros(7)
  np.testing.assert_array_equal(out['index'], expected)


def test_gradients_flow_through_the_chunks():
  x, (b, _) = _inputs()
  loss = lambda a, chunk: chunks.map_in_chunks(
      lambda i, x, b: jnp.tanh(x @ a) + b[:, None], chunk, x, b).sum()
  a = A
  np.testing.assert_allclose(jax.grad(loss)(a, 3), jax.grad(loss)(a, 0), rtol=1e-5, atol=1e-6)


def test_a_negative_chunk_is_refused():
  with pytest.raises(ValueError, match='chunk must be >= 0'):
    chunks.map_in_chunks(lambda i, x: x, -1, jnp.ones((3, 2)))
