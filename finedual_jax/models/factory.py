"""Builds the denoiser a config names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from finedual_jax.models.baselines import In2INDenoiser, InterGenDenoiser
from finedual_jax.models.denoiser import FineDualDenoiser

MODELS = {'finedual': FineDualDenoiser, 'intergen': InterGenDenoiser, 'in2in': In2INDenoiser}


def build_model(model_config: ml_collections.ConfigDict, *, vocab_size: int, max_text_len: int,
                feature_dim: int = 262):
  """``config.model`` (its ``name`` plus the module's fields) -> an unbound Flax module.

  ``feature_dim`` is the data set's feature width (262, or 138 for rotation-only Inter-X).
  """
  fields = dict(model_config)
  name = fields.pop('name')
  fields.pop('compute_dtype', None)  # A policy of the caller (models/precision.py).
  if name not in MODELS:
    raise ValueError(f'config.model.name: unknown model {name!r}; expected one of {sorted(MODELS)}.')
  try:
    return MODELS[name](vocab_size=vocab_size, max_text_len=max_text_len,
                        feature_dim=feature_dim, **fields)
  except TypeError as e:
    raise ValueError(f'config.model: {e}') from e


def count_parameters(model, *, max_len: int, max_text_len: int) -> int:
  """Number of parameters of ``model``, from shapes only (nothing is allocated)."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, max_len, 2, model.feature_dim)), jnp.zeros((1,), jnp.int32),
      jnp.ones((1, max_len)), jnp.ones((1, max_text_len), jnp.int32),
      jnp.ones((1, 2, max_text_len), jnp.int32)))
  return sum(x.size for x in jax.tree.leaves(shapes))
