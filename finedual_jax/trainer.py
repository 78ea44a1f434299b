"""The training loop: data, mesh, init-or-restore, step, log, evaluate, checkpoint, stop on a
signal, and a sample at the end."""

from __future__ import annotations

import math
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from finedual_jax import checkpointing
from finedual_jax import config_checks
from finedual_jax import generation
from finedual_jax import metric_writers
from finedual_jax import parallel
from finedual_jax import preemption
from finedual_jax import train_state as train_state_lib
from finedual_jax import train_step as train_step_lib
from finedual_jax import validation
from finedual_jax.data import batch as batch_lib
from finedual_jax.data import pipeline
from finedual_jax.data import representation as representation_lib
from finedual_jax.diffusion.schedule import Schedule
from finedual_jax.models import precision
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
  # One compiled program: initialising op by op compiles hundreds of small ones (the tiny
  # model: 17.6 s against 6.5-6.7 s).
  return jax.jit(model.init)(rng, dummy[batch_lib.MOTION], jnp.zeros((1,), jnp.int32),
                             dummy[batch_lib.MASK], *batch_lib.text_inputs(dummy))['params']


def _create_state(model, config: ml_collections.ConfigDict, tx,
                  text_features: tuple[int, int] | None) -> Callable[[jax.Array], Any]:
  """rng -> the run's state before its first step."""

  def create(rng):
    rng_init, rng_train = jax.random.split(rng)
    return train_state_lib.create(init_params(model, config, rng_init, text_features), tx,
                                  rng_train)

  return create


def initial_state(model, config: ml_collections.ConfigDict, tx, mesh: jax.sharding.Mesh,
                  text_features: tuple[int, int] | None = None) -> train_state_lib.TrainState:
  """The run's state before its first step, from ``config.seed``: one compiled program, written
  straight into its global form, replicated over ``mesh`` (``DataParallel.put`` gives the
  backend's form)."""
  return jax.jit(_create_state(model, config, tx, text_features),
                 out_shardings=parallel.replicated(mesh))(jax.random.key(config.seed))


def abstract_state(model, config: ml_collections.ConfigDict, tx, mesh: jax.sharding.Mesh,
                   text_features: tuple[int, int] | None = None) -> Any:
  """``initial_state``'s shapes, dtypes and shardings (what a checkpoint restores onto),
  traced only: nothing is compiled or run, so a resumed run skips the initialisers (the tiny
  model's compiled init above: 6.5-6.7 s on 2 CPU cores)."""
  abstract = jax.eval_shape(_create_state(model, config, tx, text_features),
                            jax.random.key(config.seed))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      abstract)


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


def make_train_step(model, tx, schedule: Schedule, config: ml_collections.ConfigDict, mean,
                    std, weights: dict[str, float] | None = None):
  """The per-device training step ``config`` describes (``train_step.make_train_step``);
  ``weights`` default to ``loss_weights(config)``."""
  return train_step_lib.make_train_step(
      model, tx, schedule, mean=jnp.asarray(mean), std=jnp.asarray(std),
      cond_drop_p=config.diffusion.cond_drop_p,
      loss_weights=loss_weights(config) if weights is None else weights,
      geometric_max_t=config.losses.geometric_max_t,
      nce_temperature=config.losses.nce_temperature, ema_decay=config.train.ema_decay,
      grad_accum_steps=config.train.grad_accum_steps,
      compute_dtype=precision.compute_dtype(config.model))


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains per ``config`` in ``workdir`` (resuming from its latest good checkpoint) and samples.

  Call ``parallel.initialize_distributed`` first in a multi-process run. Returns a summary:
  final step and metrics, whether a signal stopped the run early (``preempted``), and the paths
  of what was written.
  """
  config_checks.validate(config, device_count=jax.device_count(),
                         process_count=jax.process_count())
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  log = (lambda msg: print(msg, flush=True)) if is_main else (lambda msg: None)
  # Process 0 builds a synthetic data set; the others then find it built (prepare is idempotent).
  dataset_dir = prepare_data(config, workdir) if is_main else None
  parallel.barrier('finedual_prepare_data')
  dataset_dir = dataset_dir or prepare_data(config, workdir)
  artifacts = pipeline.load_artifacts(dataset_dir, config.data.stats_file,
                                       config.data.stats_std_file,
                                       config.data.text_features_file)
  log(f'data: {dataset_dir}')

  train = config.train
  mesh = parallel.make_mesh(config.parallel.num_devices)
  dp = parallel.DataParallel(mesh, config.parallel.backend)
  local_batch = parallel.local_batch_size(train.batch_size, mesh, train.grad_accum_steps)
  model = build_model(config.model, vocab_size=artifacts.tokenizer.vocab_size,
                      max_text_len=config.data.max_text_len,
                      feature_dim=artifacts.representation.feature_dim)
  tx = make_optimizer(config)
  schedule = Schedule.cosine(config.diffusion.num_steps)

  abstract = abstract_state(model, config, tx, mesh, artifacts.text_feature_shape)
  num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=train.max_to_keep,
                                            keep_every=train.keep_every, training=True)
  config_dict = config.to_dict()
  run_info = checkpointing.run_info(backend=config.parallel.backend)
  state, _ = checkpointer.restore_latest_good(abstract, warn=log)
  if state is None:
    state = initial_state(model, config, tx, mesh, artifacts.text_feature_shape)
  else:
    log(f'resumed from {checkpointer.directory} at step {int(state.step)}')
  checkpointing.write_json(workdir / 'config.json', config_dict)
  checkpointing.write_json(workdir / 'run_info.json', run_info)
  per_device = train.batch_size // mesh.devices.size // train.grad_accum_steps
  dtype = config.model.get('compute_dtype', 'float32')
  log(f'model: {config.model.name}, {num_params:,} parameters'
      + (f' (float32, computing in {dtype})' if dtype != 'float32' else '')
      + f'; devices: {mesh.devices.size} '
      f'({jax.devices()[0].platform}, {jax.process_count()} process(es), '
      f'{config.parallel.backend}), global batch {train.batch_size}'
      + (f' = {per_device} per device x {train.grad_accum_steps} accumulation steps'
         if train.grad_accum_steps > 1 else ''))
  if not artifacts.representation.exact_positions:
    off = [k for k, v in config.losses.items() if k in representation_lib.POSITION_TERMS and v]
    log(f'data: {artifacts.representation.name} representation without joint positions; '
        f'losses off: {", ".join(off) or "none"}')

  weights = loss_weights(config, artifacts.representation)
  step_fn = dp.compile(make_train_step(model, tx, schedule, config, artifacts.mean,
                                       artifacts.std, weights), donate=True)
  validator = None
  if train.eval_every or train.sample_every:
    try:
      validator = validation.Validator(config, dataset_dir, artifacts, model, schedule, dp,
                                       weights, jax.process_index(), jax.process_count())
    except ValueError as e:
      log(f'warning: no validation loss or samples: {e}')

  start = int(state.step)

  records = pipeline.records_in_memory(dataset_dir, 'train', config.data, log)

  def read_batches(seed: int):  # Read ahead on a low-priority thread, into the step's idle time.
    loader = pipeline.make_loader(
        dataset_dir, 'train', artifacts, batch_size=local_batch, max_len=config.data.max_len,
        max_text_len=config.data.max_text_len, train=True, seed=seed,
        swap_before_p=config.data.swap_before_p, swap_after_p=config.data.swap_after_p,
        worker_count=config.data.worker_count, shard_index=jax.process_index(),
        shard_count=jax.process_count(), in_memory=records)
    return pipeline.read_ahead(iter(loader), config.data.read_ahead,
                               priority=config.data.read_ahead_priority)

  batches = read_batches(config.seed)
  if start:
    problem = checkpointer.restore_data(batches, start)
    if problem:  # Still deterministic, but not the batches an uninterrupted run would read.
      pipeline.stop_reading_ahead(batches)
      batches = read_batches(config.seed + start)
      log(f'warning: {problem}; the input pipeline restarts with seed {config.seed + start}')
  writer = metric_writers.MetricWriter(workdir, resume_step=start, enabled=is_main)
  state = dp.put(state)
  metrics: dict[str, float] = {}
  preempted = ''
  host_batch = next(batches) if start < train.num_steps else None
  batch = dp.to_device(host_batch) if host_batch is not None else None
  tick, tick_step = time.perf_counter(), start
  try:
    with preemption.StopRequest() as stop:
      for step in range(start + 1, train.num_steps + 1):
        state, device_metrics = step_fn(state, batch)
        data_state = batches.get_state()  # Consumed up to this step's batch (saved below).
        step_batch = host_batch
        if step < train.num_steps:  # Read the next batch while the step runs.
          host_batch = next(batches)
          batch = dp.to_device(host_batch)
        # Blocking every step keeps CPU collectives from piling up (DESIGN §7); the step has
        # already decided on the device whether to apply its update.
        metrics = dp.fetch(device_metrics)
        if metrics['update_skipped']:
          _non_finite(config, workdir, step, metrics, dp, state, step_batch, mesh, log)
        if step == start + 1:  # The first step compiled: leave it out of the rates.
          tick, tick_step = time.perf_counter(), step
        if step % train.log_every == 0 or step == train.num_steps:
          now = time.perf_counter()
          rate = (step - tick_step) / max(now - tick, 1e-9) if step > tick_step else 0.0
          tick, tick_step = now, step
          writer.write(step, metrics, tensorboard_only={
              'steps_per_s': rate, 'examples_per_s': rate * train.batch_size})
          log(f'step {step}/{train.num_steps} | loss {metrics["total"]:.4f} | '
              + (f'{rate:.2f} steps/s | {rate * train.batch_size:.1f} examples/s | ETA '
                 f'{_format_eta((train.num_steps - step) / max(rate, 1e-9))}' if rate else
                 'compiled')
              + (f' | {metrics["skipped_steps"]} skipped' if metrics['skipped_steps'] else ''))
        periodic = False
        if validator and train.eval_every and (step % train.eval_every == 0
                                               or step == train.num_steps):
          eval_metrics = validator.loss(state.ema_params)
          writer.write(step, eval_metrics, group='eval', jsonl_prefix='eval/')
          log(f'eval step {step} | val loss {eval_metrics["total"]:.4f} '
              f'({train.eval_batches} batches, EMA weights)')
          periodic = True
        if validator and train.sample_every and step % train.sample_every == 0:
          ema = parallel.process_local(dp.get(state).ema_params)
          if is_main:
            records = validator.samples(ema, step, workdir)
            log(f'samples: {pathlib.Path(records[0]["gif"]).parent}')
          periodic = True
        if periodic:  # Not training time.
          tick, tick_step = time.perf_counter(), step
        stopping = stop.should_stop(step)
        if step % train.checkpoint_every == 0 or step == train.num_steps or stopping:
          checkpointer.save(step, dp.get(state), config_dict, data_state, run_info)
        if stopping:
          preempted = stop.signal_name or 'signal'
          checkpointer.wait()
          log(f'{preempted}: stopped after step {step}; checkpoint saved at step {step} in '
              f'{checkpointer.directory}. Run the same command again to resume.')
          break
    checkpointer.wait()
  finally:
    pipeline.stop_reading_ahead(batches)
    checkpointer.close()
    writer.close()
  state = dp.get(state)
  summary = {'step': int(state.step), 'metrics': metrics, 'workdir': str(workdir),
             'checkpoints': str(checkpointer.directory), 'dataset_dir': str(dataset_dir),
             'preempted': preempted}
  log(f'checkpoints: {checkpointer.directory}')
  if config.sample.text and not preempted:
    # Process-local copies: sampling involves no other process (DESIGN §4, multi-host).
    summary['samples'] = sample_after_training(config, workdir, parallel.process_local(state),
                                               model, schedule, artifacts)
  return summary


def _non_finite(config, workdir, step, metrics, dp, state, host_batch, mesh, log) -> None:
  """Applies ``train.nan_policy`` to a step whose loss or gradient was not finite (the step
  has already left the weights, EMA and optimizer state as they were)."""
  bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
  terms = ', '.join(f'{k}={metrics[k]}' for k in bad) or 'none (the gradient is)'
  if config.train.nan_policy == 'skip':
    log(f'warning: step {step}: non-finite loss terms: {terms}; update skipped '
        f'({metrics["skipped_steps"]} so far; train.nan_policy="skip")')
    return
  before = dp.get(state)
  before = before.replace(step=before.step - 1, skipped_steps=before.skipped_steps - 1)
  path = checkpointing.save_diagnostic(
      workdir, step, before, parallel.to_device(host_batch, mesh),
      {'step': step, 'metrics': metrics, 'non_finite': bad, 'config': config.to_dict()})
  raise FloatingPointError(
      f'step {step}: non-finite loss terms: {terms}. The state this step started from and its '
      f'batch are saved in {path} (not a checkpoint a resume uses). train.nan_policy="stop"; '
      'set --config.train.nan_policy=skip to discard such updates and go on, or lower '
      'optimizer.learning_rate.')


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
  abstract = abstract_state(model, config, make_optimizer(config), parallel.make_mesh(1),
                            artifacts.text_feature_shape)
  state, _ = checkpointer.restore(abstract, step)
  checkpointer.close()
  return config, model, state, artifacts, Schedule.cosine(config.diffusion.num_steps)


def _built_dataset_dir(data_dir: pathlib.Path) -> pathlib.Path:
  """The one version folder under ``data_dir/<name>/`` that holds a built data set."""
  found = sorted(p.parent for p in data_dir.glob('*/*/dataset_info.json'))
  if len(found) != 1:
    raise FileNotFoundError(f'expected one built data set under {data_dir}, found {len(found)}.')
  return found[0]
