"""The embedded default: a small FineDual on the synthetic data set, minutes on a laptop CPU.

Sized so that the sampled interaction is recognisable (hands meet in a handshake, both bend in
a bow, gaits in a side-by-side walk) after 1,500 steps of batch 16 on 3-second windows: about
9 minutes end to end on a 2-core CPU (3 steps/s), less with more cores.

    python -m finedual_jax.train                                  # this config, ./finedual_run
    python -m finedual_jax.train --config experiments/default.py:size=tiny --workdir /tmp/run

Variants (comma-separated ``key=value``): ``size=small`` (default) or ``size=tiny`` (seconds,
for tests and smoke runs).
"""

from __future__ import annotations

import ml_collections

DEFAULT_PROMPT = 'Two people walk toward each other and shake hands with their right hands.'


def parse_variant(arg: str | None, defaults: dict[str, str]) -> dict[str, str]:
  """'size=tiny,foo=bar' -> dict, rejecting keys not in ``defaults``."""
  values = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep or key not in defaults:
      raise ValueError(f'config variant {item!r}: expected key=value with key in {sorted(defaults)}.')
    values[key] = value
  return values


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = parse_variant(arg, {'size': 'small'})
  if variant['size'] not in ('small', 'tiny'):
    raise ValueError(f"config variant size={variant['size']!r}: expected 'small' or 'tiny'.")
  tiny = variant['size'] == 'tiny'
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.source = 'synthetic'       # 'synthetic': generate + build under workdir; 'tfds': read dataset_dir.
  config.data.dataset_dir = ''           # A built TFDS version folder (source='tfds').
  config.data.raw_dir = ''               # Synthetic InterHuman-layout files ('' -> WORKDIR/data/raw).
  config.data.synthetic_seed = 0         # Seed of the synthetic data set.
  config.data.clips_per_type = 3 if tiny else 24  # Synthetic clips per interaction type.
  config.data.vocab_size = 1000          # SentencePiece vocabulary bound (the build may use fewer).
  config.data.stats_file = ''            # Optional .npz with mean/std to use instead of the build's.
  config.data.max_len = 32 if tiny else 90  # Feature rows per example (frames at 30 fps).
  config.data.max_text_len = 32          # Tokens per text, BOS/EOS included.
  config.data.swap_before_p = 0.5        # Person swap before canonicalisation.
  config.data.swap_after_p = 0.5         # Person swap after canonicalisation.
  config.data.worker_count = 0           # grain worker processes (0: in the training process).

  config.model = ml_collections.ConfigDict()
  config.model.name = 'finedual'         # See finedual_jax/models/factory.py.
  config.model.width = 32 if tiny else 128
  config.model.num_heads = 2 if tiny else 4
  config.model.ff_dim = 64 if tiny else 256
  config.model.individual_layers = 1     # Self-Learning stage layers.
  config.model.interaction_layers = 1 if tiny else 2  # Adaptive Adjustment (cooperative) layers.
  config.model.refinement_layers = 1     # Teacher-Guided Refinement layers.
  config.model.text_width = 32 if tiny else 128
  config.model.text_layers = 1 if tiny else 2
  config.model.text_heads = 2 if tiny else 4
  config.model.dropout = 0.0 if tiny else 0.1

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.num_steps = 1000      # Cosine schedule length.
  config.diffusion.ddim_steps = 10 if tiny else 50
  config.diffusion.cond_drop_p = 0.1     # Per mode: overall only, individual only, both.
  config.diffusion.guidance_overall = 2.5  # w_o in u + w_o (c_o - u) + w_i (c_i - u).
  config.diffusion.guidance_individual = 1.0  # w_i.
  config.diffusion.velocity_weight = 30.0  # InterGen's weight.
  config.diffusion.geometric_max_t = 700   # Geometric terms only for t <= this.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-3 if tiny else 2e-3
  config.optimizer.warmup_steps = 5 if tiny else 100
  config.optimizer.weight_decay = 1e-4
  config.optimizer.clip_norm = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 6 if tiny else 1500
  config.train.batch_size = 8 if tiny else 16  # Global batch over all devices and processes.
  config.train.ema_decay = 0.99 if tiny else 0.999
  config.train.log_every = 2 if tiny else 100
  config.train.checkpoint_every = 3 if tiny else 500
  config.train.max_to_keep = 3

  config.parallel = ml_collections.ConfigDict()
  config.parallel.num_devices = 0        # 0: every device JAX sees.

  config.sample = ml_collections.ConfigDict()
  config.sample.text = DEFAULT_PROMPT    # Rendered after training; '' to skip.
  config.sample.person1 = 'The person walks forward and shakes the other person\'s right hand.'
  config.sample.person2 = 'The person walks forward and shakes the other person\'s right hand.'
  config.sample.length = 32 if tiny else 90  # Frames.
  config.sample.seed = 0
  config.sample.use_ema = True

  config.lock()
  return config
