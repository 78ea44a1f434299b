"""Hashed-bits dropout: keep rate, unbiasedness, independence, determinism, the flax module."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from finedual_jax.models import dropout


@pytest.mark.parametrize('rate', [0.1, 0.5, 0.9])
def test_masks_keep_one_minus_rate_of_the_elements(rate):
  assert abs(dropout.keep_probability(rate) - (1 - rate)) <= 2.0**-32
  keep = np.asarray(dropout.keep_mask(jax.random.key(0), (1000, 1000), rate))
  sigma = np.sqrt(rate * (1 - rate) / keep.size)
  assert abs(keep.mean() - (1 - rate)) < 5 * sigma
  # Every row and column keeps its share too: no stripes from the index hash.
  for share in (keep.mean(0), keep.mean(1)):
    assert np.abs(share - (1 - rate)).max() < 6 * np.sqrt(rate * (1 - rate) / 1000)


def test_neighbouring_elements_and_keys_are_independent():
  rate = 0.5
  keep = np.asarray(dropout.keep_mask(jax.random.key(1), (1 << 20,), rate), np.float64)
  other = np.asarray(dropout.keep_mask(jax.random.key(2), (1 << 20,), rate), np.float64)
  limit = 5 / np.sqrt(keep.size)  # Correlations of independent bits are ~ N(0, 1/n).
  for lag in (1, 2, 16, 512, 1 << 16):
    assert abs(np.corrcoef(keep[:-lag], keep[lag:])[0, 1]) < limit, lag
  assert abs(np.corrcoef(keep, other)[0, 1]) < limit
  # A key folded with consecutive indices (the chunked attention's use) also differs.
  folded = [np.asarray(dropout.keep_mask(jax.random.fold_in(jax.random.key(1), i), (4096,), rate))
            for i in range(2)]
  assert 0.4 < (folded[0] != folded[1]).mean() < 0.6


def test_apply_is_unbiased_deterministic_and_handles_the_edge_rates():
  x = jax.random.normal(jax.random.key(3), (64, 32))
  draws = jax.vmap(lambda r: dropout.apply(x, r, 0.3))(jax.random.split(jax.random.key(4), 4000))
  np.testing.assert_allclose(np.asarray(draws.mean(0)), np.asarray(x), atol=0.12)
  once = dropout.apply(x, jax.random.key(5), 0.3)
  np.testing.assert_array_equal(np.asarray(once), np.asarray(dropout.apply(x, jax.random.key(5), 0.3)))
  kept = np.asarray(once) != 0
  np.testing.assert_allclose(np.asarray(once)[kept], np.asarray(x)[kept] / dropout.keep_probability(0.3),
                             rtol=1e-6)
  assert dropout.apply(x, jax.random.key(5), 0.0) is x
  assert not np.asarray(dropout.apply(x, jax.random.key(5), 1.0)).any()
  assert dropout.keep_probability(1.0 - 2.0**-40) > 0  # Any rate below 1 keeps something.
  half = dropout.apply(x.astype(jnp.bfloat16), jax.random.key(5), 0.3)
  assert half.dtype == jnp.bfloat16


def test_module_draws_from_the_dropout_collection_and_is_off_when_deterministic():
  layer = dropout.Dropout(0.25)
  x = jnp.ones((8, 128))
  assert layer.apply({}, x, deterministic=True) is x
  y = layer.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(6)})
  z = layer.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(7)})
  assert 0.6 < float((y != 0).mean()) < 0.9 and (np.asarray(y) != np.asarray(z)).any()
  with pytest.raises(Exception, match='dropout'):  # flax names the missing collection.
    layer.apply({}, x, deterministic=False)


def test_mask_size_limit_is_named():
  with pytest.raises(ValueError, match='at most 2\\*\\*32'):
    dropout.keep_mask(jax.random.key(0), (1 << 16, 1 << 16), 0.1)
