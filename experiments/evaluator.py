"""The evaluator (InterCLIP's architecture) trained here: ``experiments/evaluator.py:size=...``.

    python -m finedual_jax.train_evaluator --dataset_dir DIR --workdir OUT \\
        [--config experiments/evaluator.py:size=interclip]

Sizes: ``interclip`` (default: the official network, tr3e/InterGen ``configs/eval_model.yaml``:
8 layers, width 1024, FFN 2048 for the motion; width 768 for the text; embedding 512) and
``tiny`` (a few ten thousand parameters, for tests and smoke runs: seconds on a CPU).

The official evaluator's training recipe is not published (hyp.): the optimisation below
(AdamW, warm-up + cosine, clipping at 1, batch 96 of crops up to 300 frames, 40k steps) is
ours. The vocabulary, the end token and the text padding mask follow the data set's
SentencePiece tokenizer and are filled in at train time, so they are not fields here.
"""

from __future__ import annotations

import ml_collections

from experiments import base

SIZES = ('interclip', 'tiny')


def model_config(size: str) -> ml_collections.ConfigDict:
  """``InterCLIP`` fields (finedual_jax/evaluation/evaluator.py) minus the tokenizer's."""
  tiny = size == 'tiny'
  model = ml_collections.ConfigDict()
  model.feature_dim = 262                # De-normalised 262-d features (DESIGN §1.1).
  model.dropped_features = 4             # Foot contacts, which InterCLIP ignores.
  model.motion_width = 32 if tiny else 1024
  model.motion_layers = 2 if tiny else 8
  model.motion_heads = 4 if tiny else 8
  model.motion_ff_dim = 64 if tiny else 2048
  model.max_positions = 400 if tiny else 2000  # Sinusoid table: query token + frames.
  model.text_width = 32 if tiny else 768
  model.text_layers = 2 if tiny else 8
  model.text_heads = 4 if tiny else 8
  model.text_ff_dim = 64 if tiny else 2048
  model.context_length = 32 if tiny else 77  # Tokens per caption (BOS and EOS included).
  model.embed_dim = 16 if tiny else 512
  model.dropout = 0.0 if tiny else 0.1
  return model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = base.parse_variant(arg, {'size': 'interclip'}, {'size': SIZES})
  tiny = variant['size'] == 'tiny'
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config(variant['size'])

  config.data = ml_collections.ConfigDict()
  config.data.dataset_dir = ''           # A built data set (python -m data_pipelines.prepare).
  config.data.max_len = 32 if tiny else 300  # Crop length in feature rows (frames at 30 fps).
  config.data.swap_before_p = 0.5        # Person swaps as in training the denoiser (§1.2).
  config.data.swap_after_p = 0.5
  config.data.worker_count = 0           # grain worker processes (0: in this process).
  config.data.in_memory = True           # Decode the records once (pipeline.InMemorySource).

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 2e-3 if tiny else 1e-4
  config.optimizer.warmup_steps = 20 if tiny else 1000
  config.optimizer.weight_decay = 1e-4 if tiny else 1e-2
  config.optimizer.clip_norm = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 300 if tiny else 40_000
  config.train.batch_size = 16 if tiny else 96  # Contrastive pool: more negatives per step.
  config.train.log_every = 50 if tiny else 200
  config.train.eval_every = 150 if tiny else 2000   # Validation loss and retrieval accuracy.
  config.train.checkpoint_every = 150 if tiny else 2000
  config.train.max_to_keep = 2

  config.eval = ml_collections.ConfigDict()
  config.eval.split = 'val'              # Split for the periodic validation ('' to skip).
  config.eval.pool_size = 32             # Retrieval among this many clips (chance 1/pool).
  config.eval.batch_size = 32 if tiny else 64  # Clips per evaluator forward pass.
  config.lock()
  return config
