"""Builds the denoiser a config names."""

from __future__ import annotations

import ml_collections

from finedual_jax.models.denoiser import FineDualDenoiser

MODELS = {'finedual': FineDualDenoiser}


def build_model(model_config: ml_collections.ConfigDict, *, vocab_size: int, max_text_len: int):
  """``config.model`` (its ``name`` plus the module's fields) -> an unbound Flax module."""
  fields = dict(model_config)
  name = fields.pop('name')
  if name not in MODELS:
    raise ValueError(f'config.model.name: unknown model {name!r}; expected one of {sorted(MODELS)}.')
  try:
    return MODELS[name](vocab_size=vocab_size, max_text_len=max_text_len, **fields)
  except TypeError as e:
    raise ValueError(f'config.model: {e}') from e
