"""Config of the cooperative baselines (InterGen, in2IN-style) at each size."""

from __future__ import annotations

import ml_collections

from experiments import base


def baseline_config(name: str, arg: str | None) -> ml_collections.ConfigDict:
  variant = base.parse_variant(arg, {'size': 'small', 'dataset': 'synthetic'},
                               {'size': base.SIZES, 'dataset': base.DATASETS})
  size = variant['size']
  config = base.base_config(size, variant['dataset'])
  config.model = ml_collections.ConfigDict()
  config.model.name = name
  dims = {'tiny': (32, 2, 64, 2), 'small': (128, 4, 256, 4), 'paper': (1024, 8, 2048, 8)}[size]
  config.model.width, config.model.num_heads, config.model.ff_dim, config.model.num_layers = dims
  config.model.dropout = 0.0 if size == 'tiny' else 0.1
  config.model.remat = False             # True: recompute block activations (less memory).
  config.model.compute_dtype = 'float32'  # 'bfloat16': mixed precision (float32 params/optimizer).
  for key, value in base.text_model_fields(size).items():
    config.model[key] = value
  for term in ('distance_regression', 'individual_nce', 'overall_nce'):
    config.losses[term] = 0.0  # FineDual's auxiliary outputs do not exist here.
  config.lock()
  return config
