"""The attention function every block uses: jax.nn.dot_product_attention when no dropout
applies, flax's implementation with dropout; both must compute flax's attention."""

import flax.linen as nn
import jax
import numpy as np

from finedual_jax.models import layers


def _inputs():
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (3, 7, 2, 8))
  k = jax.random.normal(keys[1], (3, 5, 2, 8))
  v = jax.random.normal(keys[2], (3, 5, 2, 8))
  key_valid = np.ones((3, 5), bool)
  key_valid[1, 3:] = False
  return q, k, v, layers.attention_mask(np.ones((3, 7), bool), key_valid)


def test_fused_path_equals_flax_attention_with_masks():
  q, k, v, mask = _inputs()
  want = nn.dot_product_attention(q, k, v, mask=mask, deterministic=True)
  got = layers.attention(q, k, v, mask=mask, deterministic=True)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  # Masked keys carry no weight: changing their values changes nothing.
  v2 = v.at[1, 3:].set(100.0)
  np.testing.assert_allclose(np.asarray(layers.attention(q, k, v2, mask=mask)),
                             np.asarray(got), atol=1e-5)


def test_dropout_path_is_flax_attention_with_dropout():
  q, k, v, mask = _inputs()
  rng = jax.random.key(3)
  got = layers.attention(q, k, v, mask=mask, dropout_rate=0.5, deterministic=False,
                         dropout_rng=rng)
  want = nn.dot_product_attention(q, k, v, mask=mask, dropout_rate=0.5, deterministic=False,
                                  dropout_rng=rng)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert not np.allclose(np.asarray(got), np.asarray(layers.attention(q, k, v, mask=mask)))


def test_flax_module_hands_the_dropout_rng_through():
  """Inside MultiHeadDotProductAttention (which passes an attention_fn only the keywords its
  signature names) training with dropout works and draws flax's own dropout masks."""
  x = jax.random.normal(jax.random.key(1), (2, 6, 16))

  def run(attention_fn):
    module = nn.MultiHeadDotProductAttention(2, dropout_rate=0.5, deterministic=False,
                                             attention_fn=attention_fn)
    params = module.init(jax.random.key(0), x, x)
    return module.apply(params, x, x, rngs={'dropout': jax.random.key(5)})

  got, want = run(layers.attention), run(nn.dot_product_attention)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
