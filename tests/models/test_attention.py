"""The attention function every block uses, and each implementation behind it: the chunked
one (CPU; the fused kernel has its own tests), jax.nn.dot_product_attention and flax's (dropout off CPU). All must compute
flax's attention, forward and backward, with masks, dropout and bfloat16."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from finedual_jax.models import chunked_attention
from finedual_jax.models import cpu_attention
from finedual_jax.models import dropout
from finedual_jax.models import layers


def _inputs(n=3, q_len=7, k_len=5, heads=2, depth=8, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (n, q_len, heads, depth), dtype)
  k = jax.random.normal(keys[1], (n, k_len, heads, depth), dtype)
  v = jax.random.normal(keys[2], (n, k_len, heads, depth), dtype)
  key_valid = np.ones((n, k_len), bool)
  key_valid[1, 3:] = False
  return q, k, v, layers.attention_mask(np.ones((n, q_len), bool), key_valid)


@pytest.mark.parametrize('implementation', ['chunked', 'xla'])
def test_each_implementation_equals_flax_attention_with_masks(implementation):
  q, k, v, mask = _inputs()
  want = nn.dot_product_attention(q, k, v, mask=mask, deterministic=True)
  got = layers.attention(q, k, v, mask=mask, implementation=implementation)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  # Masked keys carry no weight: changing their values changes nothing.
  v2 = v.at[1, 3:].set(100.0)
  np.testing.assert_allclose(
      np.asarray(layers.attention(q, k, v2, mask=mask, implementation=implementation)),
      np.asarray(got), atol=1e-5)


def test_auto_is_chunked_on_cpu_where_the_kernel_does_not_apply_and_unknown_names_fail():
  q, k, v, mask = _inputs()  # Head size 8: not for the kernel (tests/models/test_cpu_attention).
  assert not cpu_attention.supports(q, k, v)
  np.testing.assert_array_equal(np.asarray(layers.attention(q, k, v, mask=mask)),
                                np.asarray(layers.attention(q, k, v, mask=mask,
                                                            implementation='chunked')))
  with pytest.raises(ValueError, match="expected one of .* found 'flash'"):
    layers.attention(q, k, v, implementation='flash')


@pytest.mark.parametrize('shape', [(3, 7, 5), (4, 40, 40)])  # (batch, q_len, k_len)
def test_chunked_gradients_equal_autodiff_of_flax_attention(shape, monkeypatch):
  monkeypatch.setattr(chunked_attention, 'CHUNK_BYTES', 4 * 2 * 7 * 5)  # Chunks of 1 example.
  n, q_len, k_len = shape
  q, k, v, mask = _inputs(n, q_len, k_len)
  weights = jax.random.normal(jax.random.key(1), q.shape)

  def loss(fn):
    return lambda q, k, v: jnp.sum(weights * jnp.tanh(fn(q, k, v)))

  got = jax.grad(loss(lambda q, k, v: chunked_attention.dot_product_attention(q, k, v, mask)),
                 (0, 1, 2))(q, k, v)
  want = jax.grad(loss(lambda q, k, v: nn.dot_product_attention(q, k, v, mask=mask)),
                  (0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5)


def test_chunk_size_divides_the_batch_and_fits_the_budget():
  block = 4 * 8 * 300 * 300  # Bytes of one example's [heads, q_len, k_len] scores.
  assert chunked_attention.chunk_size(32, 8, 300, 300, 2 * block) == 2
  assert chunked_attention.chunk_size(6, 8, 300, 300, 4 * block) == 3
  assert chunked_attention.chunk_size(7, 8, 2000, 2000, 2 << 20) == 1  # Never below 1.


@pytest.mark.parametrize('mask_shape', [(3, 2, 7, 5), (1, 1, 7, 5), (3, 1, 1, 5)])
def test_chunked_takes_every_broadcastable_mask_and_names_a_wrong_one(mask_shape, monkeypatch):
  monkeypatch.setattr(chunked_attention, 'CHUNK_BYTES', 4 * 2 * 7 * 5)  # One example a chunk.
  q, k, v, _ = _inputs()
  mask = jax.random.bernoulli(jax.random.key(5), 0.7, mask_shape)
  want = nn.dot_product_attention(q, k, v, mask=mask)
  got = chunked_attention.dot_product_attention(q, k, v, mask)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  with pytest.raises(ValueError, match=r'mask shape \(3, 2, 7, 4\) does not broadcast to '
                                       r'\(3, 2, 7, 5\)'):
    chunked_attention.dot_product_attention(q, k, v, jnp.ones((3, 2, 7, 4), bool))


def _reference_with_keep(q, k, v, mask, keep, rate):
  """Textbook attention with a given keep-mask [batch, heads, q_len, k_len], for autodiff."""
  n, q_len, heads, depth = q.shape
  flat = lambda x: x.transpose(0, 2, 1, 3).reshape(n * heads, x.shape[1], depth)
  s = jnp.einsum('nqd,nkd->nqk', flat(q), flat(k)) / np.sqrt(depth)
  full_mask = jnp.broadcast_to(mask, (n, heads, q_len, k.shape[1])).reshape(s.shape)
  p = jax.nn.softmax(jnp.where(full_mask, s, -1e30), axis=-1)
  p = jnp.where(keep.reshape(s.shape), p / dropout.keep_probability(rate), 0.0)
  out = jnp.einsum('nqk,nkd->nqd', p, flat(v))
  return out.reshape(n, heads, q_len, depth).transpose(0, 2, 1, 3)


def test_chunked_dropout_forward_and_backward_use_the_same_keep_masks(monkeypatch):
  monkeypatch.setattr(chunked_attention, 'CHUNK_BYTES', 4 * 2 * 7 * 5 * 2)  # 2 examples.
  q, k, v, mask = _inputs(n=4)
  rate, rng = 0.3, jax.random.key(4)
  chunk = chunked_attention.chunk_size(4, 2, 7, 5)
  assert chunk == 2
  keep = jnp.concatenate([dropout.keep_mask(jax.random.fold_in(rng, i), (chunk, 2, 7, 5), rate)
                          for i in range(4 // chunk)])
  weights = jax.random.normal(jax.random.key(1), q.shape)
  loss = lambda fn: (lambda q, k, v: jnp.sum(weights * jnp.tanh(fn(q, k, v))))
  chunked = lambda q, k, v: chunked_attention.dot_product_attention(
      q, k, v, mask, dropout_rng=rng, dropout_rate=rate)
  reference = lambda q, k, v: _reference_with_keep(q, k, v, mask, keep, rate)
  np.testing.assert_allclose(np.asarray(chunked(q, k, v)), np.asarray(reference(q, k, v)),
                             atol=1e-5)
  for g, w in zip(jax.grad(loss(chunked), (0, 1, 2))(q, k, v),
                  jax.grad(loss(reference), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5)
  # Dropout is unbiased: averaged over many draws it is the attention without dropout.
  draws = jax.vmap(lambda r: chunked_attention.dot_product_attention(
      q, k, v, mask, dropout_rng=r, dropout_rate=rate))(jax.random.split(rng, 2000))
  np.testing.assert_allclose(np.asarray(draws.mean(0)),
                             np.asarray(chunked_attention.dot_product_attention(q, k, v, mask)),
                             atol=0.1)
  with pytest.raises(ValueError, match='needs a dropout_rng'):
    chunked_attention.dot_product_attention(q, k, v, mask, dropout_rate=rate)


def test_chunked_bfloat16_tracks_float32():
  q, k, v, mask = _inputs()
  full = chunked_attention.dot_product_attention(q, k, v, mask)
  half = chunked_attention.dot_product_attention(
      *(x.astype(jnp.bfloat16) for x in (q, k, v)), mask)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), np.asarray(full), atol=0.05)


def test_xla_dropout_path_is_flax_attention_with_dropout():
  q, k, v, mask = _inputs()
  rng = jax.random.key(3)
  got = layers.attention(q, k, v, mask=mask, dropout_rate=0.5, deterministic=False,
                         dropout_rng=rng, implementation='xla')
  want = nn.dot_product_attention(q, k, v, mask=mask, dropout_rate=0.5, deterministic=False,
                                  dropout_rng=rng)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert not np.allclose(np.asarray(got), np.asarray(layers.attention(q, k, v, mask=mask)))


def test_flax_module_hands_the_dropout_rng_through():
  """Inside MultiHeadDotProductAttention (which passes an attention_fn only the keywords its
  signature names) dropout gets the module's 'dropout' rng: the same rng gives the same
  output, another rng another one, and without dropout it is flax's own attention."""
  x = jax.random.normal(jax.random.key(1), (2, 6, 16))

  def run(attention_fn, deterministic=False, seed=5):
    module = nn.MultiHeadDotProductAttention(2, dropout_rate=0.5, deterministic=deterministic,
                                             attention_fn=attention_fn)
    params = module.init(jax.random.key(0), x, x)
    return np.asarray(module.apply(params, x, x, rngs={'dropout': jax.random.key(seed)}))

  np.testing.assert_array_equal(run(layers.attention), run(layers.attention))
  assert not np.allclose(run(layers.attention), run(layers.attention, seed=6))
  np.testing.assert_allclose(run(layers.attention, True), run(nn.dot_product_attention, True),
                             atol=1e-6)


def test_an_additive_bias_takes_the_xla_path_and_is_applied():
  q, k, v, mask = _inputs()
  bias = jax.random.normal(jax.random.key(7), (3, 2, 7, 5))
  want = nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
  got = layers.attention(q, k, v, bias, mask, implementation='chunked')
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
