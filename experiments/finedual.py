"""FineDual: ``experiments/finedual.py:size=paper,dataset=interhuman[,ablation=no_graph]``.

Ablations (DESIGN §2): ``no_alignment`` (no stage-1 text-motion InfoNCE), ``no_distance``
(no distance predictor: an ungated graph), ``no_graph``, ``no_refinement`` (no stage 3).
"""

from __future__ import annotations

import ml_collections

from experiments import base

ABLATIONS = ('none', 'no_alignment', 'no_distance', 'no_graph', 'no_refinement')


def model_config(size: str) -> ml_collections.ConfigDict:
  model = ml_collections.ConfigDict()
  model.name = 'finedual'                # See finedual_jax/models/factory.py.
  dims = {'tiny': (32, 2, 64, 16, 16), 'small': (128, 4, 256, 32, 64),
          'paper': (1024, 8, 2048, 256, 512)}[size]
  model.width, model.num_heads, model.ff_dim, model.graph_hidden, model.embed_dim = dims
  model.individual_layers = 2 if size == 'paper' else 1  # Self-Learning stage.
  model.interaction_layers = {'tiny': 1, 'small': 2, 'paper': 4}[size]  # Cooperative layers.
  model.refinement_layers = 2 if size == 'paper' else 1  # Teacher-Guided Refinement.
  model.graph_rounds = 1 if size == 'tiny' else 2  # Message-passing rounds.
  model.graph_message_passing = 'jraph'  # Or 'dense': the same function (interaction_graph.py).
  model.num_parts = 5                    # Body parts per person (hyp.).
  model.distance_threshold = 1.0         # D_K in metres (hyp.).
  model.distance_temperature = 0.1       # tau of the distance gate (hyp.).
  model.use_distance_predictor = True
  model.use_graph = True
  model.use_refinement = True
  model.dropout = 0.0 if size == 'tiny' else 0.1
  model.remat = False                    # True: recompute block activations (less memory).
  model.compute_dtype = 'float32'        # 'bfloat16': mixed precision (float32 params/optimizer).
  for key, value in base.text_model_fields(size).items():
    model[key] = value
  return model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = base.parse_variant(
      arg, {'size': 'small', 'dataset': 'synthetic', 'ablation': 'none'},
      {'size': base.SIZES, 'dataset': base.DATASETS, 'ablation': ABLATIONS})
  config = base.base_config(variant['size'], variant['dataset'])
  config.model = model_config(variant['size'])
  ablation = variant['ablation']
  if ablation == 'no_alignment':
    config.losses.individual_nce = 0.0
  elif ablation == 'no_distance':
    config.model.use_distance_predictor = False
    config.losses.distance_regression = 0.0
  elif ablation == 'no_graph':
    config.model.use_graph = False
    config.losses.distance_regression = 0.0
  elif ablation == 'no_refinement':
    config.model.use_refinement = False
  config.lock()
  return config
