"""The training loop: data, mesh, init-or-restore, step, log, checkpoint, and a sample at the end."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from finedual_jax import checkpointing
from finedual_jax import generation
from finedual_jax import parallel
from finedual_jax import train_state as train_state_lib
from finedual_jax import train_step as train_step_lib
from finedual_jax.data import batch as batch_lib
from finedual_jax.data import pipeline
from finedual_jax.data import representation as representation_lib
from finedual_jax.diffusion.schedule import Schedule
from finedual_jax.models.factory import build_model


def prepare_data(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> pathlib.Path:
  """Returns the built TFDS data set folder, building the synthetic one if the config says so."""
  data = config.data
  if data.source == 'tfds':
    if not data.dataset_dir:
      raise ValueError('config.data.dataset_dir: required with config.data.source="tfds" (a '
                       'folder written by python -m data_pipelines.prepare).')
    return pathlib.Path(data.dataset_dir)
  if data.source != 'synthetic':
    raise ValueError(f'config.data.source: expected "synthetic" or "tfds", found {data.source!r}.')
  from data_pipelines import prepare  # Building data is the data_pipelines' job; only when asked.
  raw_dir = pathlib.Path(data.raw_dir) if data.raw_dir else workdir / 'data' / 'raw'
  return prepare.prepare_synthetic(raw_dir, workdir / 'data' / 'tfds', seed=data.synthetic_seed,
                                   clips_per_type=data.clips_per_type, vocab_size=data.vocab_size)


def init_params(model, config: ml_collections.ConfigDict, rng: jax.Array,
                text_features: tuple[int, int] | None = None) -> Any:
  """Initial parameters; ``text_features`` = (Lf, Df) when the run uses frozen text features."""
  shapes = batch_lib.spec(1, config.data.max_len, config.data.max_text_len, model.feature_dim,
                          text_features)
  dummy = {k: jnp.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()}
  return model.init(rng, dummy[batch_lib.MOTION], jnp.zeros((1,), jnp.int32),
                    dummy[batch_lib.MASK], *batch_lib.text_inputs(dummy))['params']


def loss_weights(config: ml_collections.ConfigDict,
                 representation: representation_lib.Representation = representation_lib.POSITIONS
                 ) -> dict[str, float]:
  """``config.losses`` without its non-weight fields; terms that need joint positions are 0
  when the data set has none (rotation-only Inter-X)."""
  weights = {k: float(v) for k, v in config.losses.items()
             if k not in ('geometric_max_t', 'nce_temperature')}
  if not representation.exact_positions:
    weights.update({k: 0.0 for k in weights if k in representation_lib.POSITION_TERMS})
  return weights


def make_optimizer(config: ml_collections.ConfigDict):
  return train_state_lib.make_optimizer(total_steps=config.train.num_steps, **config.optimizer)


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


class MetricsWriter:
  """Appends one JSON object per logged step to ``workdir/metrics.jsonl`` (process 0 only)."""

  def __init__(self, workdir: pathlib.Path):
    self.path = workdir / 'metrics.jsonl'
    self.enabled = jax.process_index() == 0

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if self.enabled:
      with self.path.open('a') as f:
        f.write(json.dumps({'step': step, **metrics}) + '\n')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains per ``config`` in ``workdir`` (resuming from its latest checkpoint) and samples.

  Returns a summary: final step and metrics, and the paths of what was written.
  """
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  log = (lambda msg: print(msg, flush=True)) if jax.process_index() == 0 else (lambda msg: None)
  dataset_dir = prepare_data(config, workdir)
  artifacts = pipeline.load_artifacts(dataset_dir, config.data.stats_file,
                                       config.data.stats_std_file,
                                       config.data.text_features_file)
  log(f'data: {dataset_dir}')

  mesh = parallel.make_mesh(config.parallel.num_devices)
  local_batch = parallel.local_batch_size(config.train.batch_size, mesh)
  model = build_model(config.model, vocab_size=artifacts.tokenizer.vocab_size,
                      max_text_len=config.data.max_text_len,
                      feature_dim=artifacts.representation.feature_dim)
  tx = make_optimizer(config)
  schedule = Schedule.cosine(config.diffusion.num_steps)

  rng_init, rng_train = jax.random.split(jax.random.key(config.seed))
  params = init_params(model, config, rng_init, artifacts.text_feature_shape)
  state = train_state_lib.create(params, tx, rng_train)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  state = parallel.replicate(state, mesh)
  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=config.train.max_to_keep)
  config_dict = config.to_dict()
  if checkpointer.latest_step() is not None:
    state, _ = checkpointer.restore(checkpointing.abstract_like(state))
    log(f'resumed from {checkpointer.directory} at step {int(state.step)}')
  (workdir / 'config.json').write_text(json.dumps(config_dict, indent=2))
  log(f'model: {config.model.name}, {num_params:,} parameters; devices: {mesh.devices.size} '
      f'({jax.devices()[0].platform}), global batch {config.train.batch_size}')
  if not artifacts.representation.exact_positions:
    off = [k for k, v in config.losses.items() if k in representation_lib.POSITION_TERMS and v]
    log(f'data: {artifacts.representation.name} representation without joint positions; '
        f'losses off: {", ".join(off) or "none"}')

  step_fn = parallel.data_parallel(train_step_lib.make_train_step(
      model, tx, schedule, mean=jnp.asarray(artifacts.mean), std=jnp.asarray(artifacts.std),
      cond_drop_p=config.diffusion.cond_drop_p,
      loss_weights=loss_weights(config, artifacts.representation),
      geometric_max_t=config.losses.geometric_max_t,
      nce_temperature=config.losses.nce_temperature, ema_decay=config.train.ema_decay), mesh)

  start = int(state.step)

  def loader(seed: int):
    return pipeline.make_loader(
        dataset_dir, 'train', artifacts, batch_size=local_batch, max_len=config.data.max_len,
        max_text_len=config.data.max_text_len, train=True, seed=seed,
        swap_before_p=config.data.swap_before_p, swap_after_p=config.data.swap_after_p,
        worker_count=config.data.worker_count, shard_index=jax.process_index(),
        shard_count=jax.process_count())

  batches = iter(loader(config.seed))
  if start:
    problem = checkpointer.restore_data(batches, start)
    if problem:  # Still deterministic, but not the batches an uninterrupted run would read.
      batches = iter(loader(config.seed + start))
      log(f'warning: {problem}; the input pipeline restarts with seed {config.seed + start}')
  writer = MetricsWriter(workdir)
  metrics: dict[str, float] = {}
  tick, tick_step = time.perf_counter(), start
  batch = parallel.to_device(next(batches), mesh) if start < config.train.num_steps else None
  for step in range(start + 1, config.train.num_steps + 1):
    state, device_metrics = step_fn(state, batch)
    data_state = batches.get_state()  # Consumed up to this step's batch (saved below).
    if step < config.train.num_steps:  # Read the next batch while the step runs.
      batch = parallel.to_device(next(batches), mesh)
    # Blocking every step keeps CPU collectives from piling up (DESIGN §7) and checks the loss.
    metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not np.isfinite(metrics['total']):
      raise FloatingPointError(f'step {step}: non-finite loss; terms: {metrics}')
    if step % config.train.log_every == 0 or step == config.train.num_steps:
      now = time.perf_counter()
      rate = (step - tick_step) / max(now - tick, 1e-9)
      tick, tick_step = now, step
      writer.write(step, metrics)
      log(f'step {step}/{config.train.num_steps} | loss {metrics["total"]:.4f} | '
          f'{rate:.2f} steps/s | {rate * config.train.batch_size:.1f} examples/s | '
          f'ETA {_format_eta((config.train.num_steps - step) / max(rate, 1e-9))}')
    if step % config.train.checkpoint_every == 0 or step == config.train.num_steps:
      checkpointer.save(step, state, config_dict, data_state)
  checkpointer.wait()
  checkpointer.close()
  summary = {'step': int(state.step), 'metrics': metrics, 'workdir': str(workdir),
             'checkpoints': str(checkpointer.directory), 'dataset_dir': str(dataset_dir)}
  log(f'checkpoints: {checkpointer.directory}')
  if config.sample.text:
    summary['samples'] = sample_after_training(config, workdir, state, model, schedule, artifacts)
  return summary


def sample_after_training(config, workdir, state, model, schedule, artifacts) -> list[dict]:
  """Generates and renders ``config.sample``'s prompt with the trained weights."""
  prompt = generation.Prompt.from_text(config.sample.text, config.sample.person1,
                                       config.sample.person2)
  sample_fn = generation.make_sampler(
      model, schedule, w_overall=config.diffusion.guidance_overall,
      w_individual=config.diffusion.guidance_individual, ddim_steps=config.diffusion.ddim_steps)
  params = state.ema_params if config.sample.use_ema else state.params
  features = generation.generate(sample_fn, params, artifacts, [prompt],
                                 length=config.sample.length, max_len=config.data.max_len,
                                 max_text_len=config.data.max_text_len, seed=config.sample.seed)
  if jax.process_index() != 0:
    return []
  out_dir = workdir / 'samples' / f'step_{int(state.step)}'
  record = generation.write_sample(out_dir, generation.sample_stem(0, prompt), prompt,
                                   features[0], representation=artifacts.representation)
  generation.write_index(out_dir, [record], step=int(state.step), seed=config.sample.seed)
  for key in ('gif', 'png', 'positions'):
    print(f'sample {key}: {record[key]}', flush=True)
  return [record]


def load_trained(workdir: str | pathlib.Path, step: int | None = None):
  """Restores a training run for inference: (config, model, state, artifacts, schedule).

  The config comes from the checkpoint itself, so the model is rebuilt as it was trained.
  """
  workdir = pathlib.Path(workdir).absolute()
  checkpointer = checkpointing.Checkpointer(workdir)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {checkpointer.directory}; train first with '
                            f'python -m finedual_jax.train --workdir {workdir}')
  config = generation.config_from_dict(checkpointer.restore_config(step))
  if config.data.source == 'tfds':
    dataset_dir = pathlib.Path(config.data.dataset_dir)
  else:
    dataset_dir = _built_dataset_dir(workdir / 'data' / 'tfds')
  artifacts = pipeline.load_artifacts(dataset_dir, config.data.stats_file,
                                       config.data.stats_std_file,
                                       config.data.text_features_file)
  model = build_model(config.model, vocab_size=artifacts.tokenizer.vocab_size,
                      max_text_len=config.data.max_text_len,
                      feature_dim=artifacts.representation.feature_dim)
  tx = make_optimizer(config)
  abstract = jax.eval_shape(lambda: train_state_lib.create(
      init_params(model, config, jax.random.key(0), artifacts.text_feature_shape), tx,
      jax.random.key(0)))
  mesh = parallel.make_mesh(1)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=parallel.replicated(mesh)), abstract)
  state, _ = checkpointer.restore(abstract, step)
  checkpointer.close()
  return config, model, state, artifacts, Schedule.cosine(config.diffusion.num_steps)


def _built_dataset_dir(data_dir: pathlib.Path) -> pathlib.Path:
  """The one version folder under ``data_dir/<name>/`` that holds a built data set."""
  found = sorted(p.parent for p in data_dir.glob('*/*/dataset_info.json'))
  if len(found) != 1:
    raise FileNotFoundError(f'expected one built data set under {data_dir}, found {len(found)}.')
  return found[0]
