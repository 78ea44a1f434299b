"""Sections every experiment shares; an experiment file adds ``config.model`` and locks.

Sizes: ``tiny`` (seconds; tests and smoke runs), ``small`` (the embedded default: minutes on a
CPU), ``paper`` (InterGen's scale: 8 blocks of width 1024, T = 300). Datasets: ``synthetic``
(generated and built under the workdir) or ``interhuman`` (a TFDS folder built by
``python -m data_pipelines.prepare``; pass ``--config.data.dataset_dir``).
"""

from __future__ import annotations

import ml_collections

SIZES = ('tiny', 'small', 'paper')
DATASETS = ('synthetic', 'interhuman')
DEFAULT_PROMPT = 'Two people walk toward each other and shake hands with their right hands.'
DEFAULT_PERSON_TEXT = "The person walks forward and shakes the other person's right hand."


def parse_variant(arg: str | None, defaults: dict[str, str],
                  choices: dict[str, tuple[str, ...]]) -> dict[str, str]:
  """'size=tiny,dataset=interhuman' -> dict, rejecting unknown keys and values."""
  values = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep or key not in defaults:
      raise ValueError(f'config variant {item!r}: expected key=value with key in {sorted(defaults)}.')
    if key in choices and value not in choices[key]:
      raise ValueError(f'config variant {key}={value!r}: expected one of {list(choices[key])}.')
    values[key] = value
  return values


def base_config(size: str, dataset: str) -> ml_collections.ConfigDict:
  """Everything but the model, for a size and a dataset (unlocked)."""
  tiny, paper = size == 'tiny', size == 'paper'
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.source = 'synthetic' if dataset == 'synthetic' else 'tfds'  # 'tfds': read dataset_dir.
  config.data.dataset_dir = ''           # A built TFDS version folder (source='tfds').
  config.data.raw_dir = ''               # Synthetic InterHuman-layout files ('' -> WORKDIR/data/raw).
  config.data.synthetic_seed = 0         # Seed of the synthetic data set.
  config.data.clips_per_type = 3 if tiny else 24  # Synthetic clips per interaction type.
  config.data.vocab_size = 1000          # SentencePiece vocabulary bound (the build may use fewer).
  config.data.stats_file = ''            # Optional .npz with mean/std, or a mean .npy, to use
  config.data.stats_std_file = ''        # instead of the build's (with the std .npy here).
  config.data.text_features_file = ''    # Precomputed frozen text features (.npz) instead of
                                         # the learned token encoder: data/text_features.py.
  config.data.max_len = 32 if tiny else (300 if paper else 90)  # Feature rows (frames, 30 fps).
  config.data.max_text_len = 32 if not paper else 64  # Tokens per text, BOS/EOS included.
  config.data.swap_before_p = 0.5        # Person swap before canonicalisation.
  config.data.swap_after_p = 0.5         # Person swap after canonicalisation.
  config.data.worker_count = 0           # grain worker processes (0: in the training process);
                                         # same batches for any value, but resume with the same.
  config.data.in_memory = True           # Decode the split's records once into host memory
                                         # (InterHuman: ~2 GB, est.) instead of every epoch; with
                                         # worker_count=0 only. Same batches either way.
  config.data.read_ahead = 2             # Batches built ahead on a background thread (0: in
                                         # the loop). Same batches and checkpoints either way.
  config.data.read_ahead_priority = 'idle'  # That thread's CPU priority: 'idle' (only cores the
                                         # step leaves idle), 'low' (nice 19) or 'normal'.

  config.diffusion = ml_collections.ConfigDict()
  config.diffusion.num_steps = 1000      # Cosine schedule length.
  config.diffusion.ddim_steps = 10 if tiny else 50
  config.diffusion.cond_drop_p = 0.1     # Per mode: overall only, individual only, both.
  config.diffusion.guidance_overall = 2.5  # w_o in u + w_o (c_o - u) + w_i (c_i - u).
  config.diffusion.guidance_individual = 1.0  # w_i.

  config.losses = ml_collections.ConfigDict()  # Weights; 0 switches a term off.
  config.losses.simple = 1.0             # InterGen's terms and weights (DESIGN §3).
  config.losses.velocity = 30.0
  config.losses.bone_length = 10.0
  config.losses.foot_contact = 30.0
  config.losses.distance_map = 3.0
  config.losses.joint_affinity = 3.0
  config.losses.relative_orientation = 0.01
  config.losses.geometric_max_t = 700    # Geometric terms only for t <= this.
  config.losses.distance_regression = 1.0  # FineDual's (hyp.): part-distance regression,
  config.losses.individual_nce = 0.1     # stage-1 text-motion InfoNCE,
  config.losses.overall_nce = 0.1        # and the overall ("teacher") InfoNCE.
  config.losses.nce_temperature = 0.1

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-3 if tiny else (1e-4 if paper else 2e-3)
  config.optimizer.warmup_steps = 5 if tiny else (1000 if paper else 100)
  config.optimizer.weight_decay = 1e-4
  config.optimizer.clip_norm = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.num_steps = 6 if tiny else (200_000 if paper else 1500)
  config.train.batch_size = 8 if tiny else (64 if paper else 16)  # Global, all devices.
  config.train.ema_decay = 0.99 if tiny else 0.999
  config.train.log_every = 2 if tiny else 100
  config.train.grad_accum_steps = 1     # Micro-batches per update: each device holds
                                         # batch_size / (devices x grad_accum_steps) at a time.
  config.train.checkpoint_every = 3 if tiny else (5000 if paper else 500)
  config.train.max_to_keep = 3           # Most recent checkpoints kept ...
  config.train.keep_every = 0 if not paper else 50_000  # ... plus every step % this == 0 (0: off).
  config.train.eval_every = 0 if tiny else (5000 if paper else 500)  # Validation loss (0: off).
  config.train.eval_batches = 2 if not paper else 8  # Global batches of the val split per eval.
  config.train.eval_seed = 0             # Timesteps and noise of the validation loss.
  config.train.sample_every = 0 if not paper else 20_000  # Val prompts rendered (0: off).
  config.train.sample_prompts = 2        # How many (the first captions of the val split).
  config.train.nan_policy = 'stop'       # Non-finite loss: 'stop' (diagnostic checkpoint under
                                         # WORKDIR/diagnostics, then an error) or 'skip' the update.

  config.parallel = ml_collections.ConfigDict()
  config.parallel.num_devices = 0        # 0: every device JAX sees (all processes).
  config.parallel.backend = 'shard_map'  # Or 'pmap': the same per-device step via jax.pmap.

  config.sample = ml_collections.ConfigDict()
  config.sample.text = DEFAULT_PROMPT    # Rendered after training; '' to skip.
  config.sample.person1 = DEFAULT_PERSON_TEXT
  config.sample.person2 = DEFAULT_PERSON_TEXT
  config.sample.length = config.data.max_len  # Frames.
  config.sample.seed = 0
  config.sample.use_ema = True
  return config


def text_model_fields(size: str) -> dict:
  """Text-encoder fields shared by every denoiser, per size."""
  return {'tiny': dict(text_width=32, text_layers=1, text_heads=2),
          'small': dict(text_width=128, text_layers=2, text_heads=4),
          'paper': dict(text_width=512, text_layers=4, text_heads=8)}[size]
