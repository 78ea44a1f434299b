"""Mixed precision: float32 parameters, bfloat16 compute, float32 results."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from finedual_jax.models import precision

import test_denoiser as denoiser_tests


def test_cast_keeps_integer_leaves_and_unknown_dtypes_are_named():
  tree = {'x': jnp.ones(3), 'tokens': jnp.arange(3), 'flag': jnp.array([True])}
  cast = precision.cast(tree, jnp.bfloat16)
  assert cast['x'].dtype == jnp.bfloat16
  assert cast['tokens'].dtype == tree['tokens'].dtype and cast['flag'].dtype == jnp.bool_
  assert precision.compute_dtype(ml_collections.ConfigDict({})) == jnp.float32
  with pytest.raises(ValueError, match=r"config.model.compute_dtype: expected one of .* 'fp8'"):
    precision.compute_dtype(ml_collections.ConfigDict({'compute_dtype': 'fp8'}))


def test_bfloat16_forward_tracks_float32_and_returns_float32():
  model = denoiser_tests._model('finedual')
  x, t, mask, text, persons = denoiser_tests._inputs()
  params = denoiser_tests.perturb(denoiser_tests._initial_params('finedual'))
  # Compiled, as in training and sampling.
  full, aux = jax.jit(precision.apply, static_argnums=0)(model, params, x, t, mask, text,
                                                         persons)
  half, aux_half = jax.jit(precision.apply, static_argnums=0, static_argnames='dtype')(
      model, params, x, t, mask, text, persons, dtype=jnp.bfloat16)
  assert half.dtype == jnp.float32 and aux_half['overall_motion'].dtype == jnp.float32
  assert jax.tree.leaves(params)[0].dtype == jnp.float32  # Parameters are not changed.
  error = np.linalg.norm(np.asarray(half - full)) / np.linalg.norm(np.asarray(full))
  assert error < 0.05, error  # bfloat16 keeps 8 bits of mantissa: ~1% per layer.
  assert error > 0  # It did compute in bfloat16.
