"""Measures whether the input pipeline keeps up with the training step.

    python -m finedual_jax.data.benchmark --out /tmp/pipeline_bench.json [--dataset_dir DIR]

Three figures: the grain pipeline's throughput at T = 300 in train mode for a few worker
counts, the examples/s the compiled training step consumes at an experiment config (the
embedded default unless ``--config`` says otherwise), and their ratio. The targets: the
pipeline gives at least 1,000 examples/s and at least 20x what the step consumes, so data
loading never bounds training. With no ``--dataset_dir`` it reads the synthetic data set,
built under ``--workdir`` on first use (about 20 s) and reused afterwards.

The measuring functions are importable, so a whole-project benchmark can call them.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import itertools
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

from finedual_jax import host_memory
from finedual_jax.data import batch as batch_lib
from finedual_jax.data import pipeline

PIPELINE_TARGET = 1000.0  # examples/s at T = 300, whatever the worker count.
RATIO_TARGET = 20.0       # pipeline examples/s over training-step examples/s.


def synthetic_dataset_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  """Builds (once) the default synthetic data set under ``workdir/data`` and returns its folder.

  The layout matches the trainer's (``WORKDIR/data/raw``, ``WORKDIR/data/tfds``).
  """
  from data_pipelines import prepare  # Building data is the data_pipelines' job; only when asked.
  workdir = pathlib.Path(workdir)
  return prepare.prepare_synthetic(workdir / 'data' / 'raw', workdir / 'data' / 'tfds')


def pipeline_throughput(dataset_dir: str | pathlib.Path, artifacts: pipeline.Artifacts, *,
                        batch_size: int, max_len: int, worker_count: int, num_batches: int,
                        warmup: int, max_text_len: int = 32, split: str = 'train',
                        seed: int = 0) -> dict[str, Any]:
  """Examples/s of ``pipeline.make_loader`` in train mode (crop, swaps, tokenisation).

  The loader repeats (``num_epochs=None``) so small splits last; the first ``warmup`` batches
  (worker start-up, file opening) are read but not timed, then ``num_batches`` are timed.
  """
  if num_batches < 1 or warmup < 0:
    raise ValueError(f'pipeline_throughput: need num_batches >= 1 and warmup >= 0, found '
                     f'num_batches={num_batches}, warmup={warmup}.')
  loader = pipeline.make_loader(dataset_dir, split, artifacts, batch_size=batch_size,
                                max_len=max_len, max_text_len=max_text_len, train=True,
                                seed=seed, num_epochs=None, worker_count=worker_count)
  load_before = _load_average()
  start = time.perf_counter()
  batches = iter(loader)
  for batch in itertools.islice(batches, warmup):
    batch_lib.check(batch, batch_size, max_len, max_text_len,
                    artifacts.representation.feature_dim)
  warmup_s = time.perf_counter() - start
  valid_rows = 0.0
  start, cpu_start = time.perf_counter(), time.process_time()
  for batch in itertools.islice(batches, num_batches):
    valid_rows += float(np.sum(batch[batch_lib.MASK]))
  seconds = time.perf_counter() - start
  cpu_seconds = time.process_time() - cpu_start
  del batches  # Stops the worker processes before the next measurement starts its own.
  num_examples = num_batches * batch_size
  return {
      'worker_count': worker_count,
      'batch_size': batch_size,
      'max_len': max_len,
      'max_text_len': max_text_len,
      'num_batches': num_batches,
      'warmup_batches': warmup,
      'warmup_s': warmup_s,
      'seconds': seconds,
      'examples_per_s': num_examples / seconds,
      'batches_per_s': num_batches / seconds,
      # The synthetic clips are mostly shorter than 300 frames: this says how much of each
      # padded example was real work.
      'mean_valid_rows': valid_rows / num_examples,
      # CPU of this process (all its threads; not the workers'): with worker_count=0 it is the
      # pipeline's cost per example, independent of what else the machine runs.
      'main_process_cpu_ms_per_example': 1e3 * cpu_seconds / num_examples,
      'load_average_before': load_before,  # Other processes compete for the same cores.
  }


def model_flops(build: Callable[[], Any], *args) -> float:
  """FLOPs of one call of the jitted function ``build()`` returns, from XLA's cost analysis.

  Traced with textbook attention (``layers.attention_implementation('xla')``): the cost
  analysis counts a loop body once, so the chunked attention's loop would be undercounted,
  and the model's FLOPs should not depend on how attention is scheduled. ``build`` must make
  a new function: a jitted function already traced would reuse its trace.
  """
  from finedual_jax.models import layers

  with layers.attention_implementation('xla'):
    cost = build().lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', float('nan')))


def train_step_throughput(config, artifacts: pipeline.Artifacts, *, num_steps: int = 10,
                          warmup: int = 2, min_seconds: float = 3.0,
                          profile_dir: str | pathlib.Path | None = None) -> dict[str, Any]:
  """Examples/s the compiled training step consumes at ``config`` on this machine's devices.

  The step is built as the trainer builds it. Compute alone: one pre-placed batch over and
  over, blocking on the loss every step. In the loop: as the trainer runs it, reading and
  placing the next batch while the step runs. The two alternate after ``warmup`` steps, at
  least ``num_steps`` of each and more until the compute steps add up to ``min_seconds``;
  returns the median step times and the data wait (what the loop adds to compute alone).
  With ``profile_dir``, two more compute steps are traced there and ``profile`` says where
  their time went (``finedual_jax.profiling``: op time by model component).
  """
  import jax  # Kept out of module import so pipeline measurements run without JAX loaded.

  from finedual_jax import parallel
  from finedual_jax import trainer
  from finedual_jax.diffusion.schedule import Schedule
  from finedual_jax.models.factory import build_model

  if num_steps < 1 or warmup < 1:
    raise ValueError(f'train_step_throughput: need num_steps >= 1 and warmup >= 1 (the first '
                     f'step compiles), found num_steps={num_steps}, warmup={warmup}.')
  data = config.data
  mesh = parallel.make_mesh(config.parallel.num_devices)
  local_batch = parallel.local_batch_size(config.train.batch_size, mesh)
  model = build_model(config.model, vocab_size=artifacts.tokenizer.vocab_size,
                      max_text_len=data.max_text_len,
                      feature_dim=artifacts.representation.feature_dim)
  tx = trainer.make_optimizer(config)
  schedule = Schedule.cosine(config.diffusion.num_steps)
  state = trainer.initial_state(model, config, tx, mesh, artifacts.text_feature_shape)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  step_fn = parallel.data_parallel(
      trainer.make_train_step(model, tx, schedule, config, artifacts.mean, artifacts.std), mesh)

  records = pipeline.records_in_memory(artifacts.dataset_dir, 'train', data, log=lambda _: None)
  loader = pipeline.make_loader(
      artifacts.dataset_dir, 'train', artifacts, batch_size=local_batch, max_len=data.max_len,
      max_text_len=data.max_text_len, train=True, seed=config.seed, num_epochs=None,
      swap_before_p=data.swap_before_p, swap_after_p=data.swap_after_p,
      worker_count=data.worker_count, shard_index=jax.process_index(),
      shard_count=jax.process_count(),
      in_memory=records)
  batches = pipeline.read_ahead(iter(loader), data.read_ahead,  # As the trainer reads them.
                                priority=data.read_ahead_priority)
  # Compute alone reads a batch already on the devices (on CPU, to_device leaves host arrays
  # for the step's dispatch to place, a cost the loop measurement includes).
  batch = jax.device_put(parallel.to_device(next(batches), mesh), parallel.batch_sharding(mesh))
  jax.block_until_ready(batch)
  compile_start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - compile_start
  # Model FLOPs: what rematerialisation recomputes is time spent, not work counted.
  plain = model.clone(remat=False) if getattr(model, 'remat', False) else model
  flops = model_flops(lambda: parallel.data_parallel(trainer.make_train_step(
      plain, tx, schedule, config, artifacts.mean, artifacts.std), mesh), state, batch)
  memory = compiled.memory_analysis()
  device_bytes = (None if memory is None else int(
      memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
      - memory.alias_size_in_bytes))

  def compute_step(state):  # One pre-placed batch: compute alone.
    state, metrics = compiled(state, batch)
    return state, float(metrics['total'])  # Blocks on the step.

  def loop_step(state, next_batch):  # The trainer's loop: read the next batch while it runs.
    state, metrics = compiled(state, next_batch)
    next_batch = parallel.to_device(next(batches), mesh)
    return state, next_batch, float(metrics['total'])

  warmup_times = []
  for _ in range(warmup):
    start = time.perf_counter()
    state, loss = compute_step(state)
    warmup_times.append(time.perf_counter() - start)
  # The two kinds of step alternate, so drifting clocks and neighbours weigh on both alike;
  # short steps are repeated until each kind has run ~min_seconds (medians of few ~10 ms
  # steps are too noisy for a data wait of a few per cent). With read-ahead, each batch the
  # loop takes is replaced on the reader's thread during the next step or two: short steps
  # therefore alternate in blocks, and the first two compute steps of a block are not timed.
  # (A step of a second or more runs alone, the next batch's reading a small part of it.)
  block, untimed = ((min(10, num_steps), 2) if data.read_ahead and warmup_times[-1] < 1.0
                    else (1, 0))
  times, loop_times = [], []
  next_batch = parallel.to_device(next(batches), mesh)
  steps = warmup
  try:
    while len(times) < num_steps or sum(times) < min_seconds:
      for i in range(untimed + block):
        start = time.perf_counter()
        state, loss = compute_step(state)
        if i >= untimed:
          times.append(time.perf_counter() - start)
      losses = [loss]
      for _ in range(block):
        start = time.perf_counter()
        state, next_batch, loss = loop_step(state, next_batch)
        loop_times.append(time.perf_counter() - start)
        losses.append(loss)
      steps += untimed + 2 * block
      if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f'train_step_throughput: a step before step {steps} gave a '
                                 'non-finite loss.')
  finally:
    pipeline.stop_reading_ahead(batches)
  profile = None
  if profile_dir is not None:
    from finedual_jax import profiling
    holder = [state]

    def traced_step():
      holder[0], _ = compute_step(holder[0])

    profile = profiling.profile_components(compiled, (), trace_dir=profile_dir, call=traced_step)
  median = statistics.median(times)
  loop_median = statistics.median(loop_times)
  return {
      'model': config.model.name,
      'num_params': int(num_params),
      'global_batch': int(config.train.batch_size),
      'max_len': int(data.max_len),
      'max_text_len': int(data.max_text_len),
      'num_devices': int(mesh.devices.size),
      'platform': jax.devices()[0].platform,
      'num_steps': len(times),  # Of each kind: compute alone, and in the loop.
      'compute_seconds': sum(times),
      'warmup_steps': warmup,
      'compile_s': compile_s,
      'first_step_s': warmup_times[0],
      'median_step_s': median,
      'min_step_s': min(times),
      'max_step_s': max(times),
      'examples_per_s': config.train.batch_size / median,
      'flops_per_step': flops,  # XLA's cost analysis, textbook attention (model_flops).
      'achieved_flops_per_s': flops / median,
      'device_memory_bytes': device_bytes,  # Compiled arguments + outputs + temporaries.
      'loop_median_step_s': loop_median,
      'data_wait_fraction': max(loop_median - median, 0.0) / loop_median,
      'data_in_memory': bool(records),  # The loop read decoded records (data.in_memory).
      'read_ahead': int(data.read_ahead),  # Batches read ahead on a low-priority thread.
      'final_loss': loss,
      'profile': profile,  # Op time by component (profile_dir given), else None.
  }


def reset_peak_rss() -> bool:
  """Restarts the process's peak resident set size from its current size (Linux:
  ``/proc/self/clear_refs``), so ``peak_rss_bytes`` measures from here; False where the OS
  offers no such reset (the peak then counts from process start)."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss_bytes() -> int:
  """Peak resident set size since ``reset_peak_rss`` (Linux VmHWM), else since process start."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  import resource
  maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return maxrss if sys.platform == 'darwin' else maxrss * 1024  # Bytes on macOS, KiB elsewhere.


def _load_average() -> float | None:
  try:
    return os.getloadavg()[0]
  except (AttributeError, OSError):  # Not every OS reports one.
    return None


def _nan_if_none(value: float | None) -> float:
  return float('nan') if value is None else value


def machine_info() -> dict[str, Any]:
  """What the figures were measured on."""
  info = {'cpu_count': os.cpu_count(), 'platform': platform.platform(),
          'python': platform.python_version(),
          'timestamp': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
          'load_average': _load_average(), **host_memory.describe()}
  try:
    info['usable_cpus'] = len(os.sched_getaffinity(0))
  except AttributeError:  # Not every OS has CPU affinity.
    pass
  for package in ('jax', 'jaxlib', 'grain', 'numpy'):
    try:
      info[f'{package}_version'] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      info[f'{package}_version'] = None
  return info


def targets(pipeline_results: Sequence[dict[str, Any]], train_result: dict[str, Any] | None,
            config_pipeline: dict[str, Any] | None = None) -> dict[str, Any]:
  """The best worker count at T = 300, and the ratio of the pipeline to the training step.

  The ratio compares like with like: the pipeline at the training config's own window, batch
  and worker count (``config_pipeline``) against that config's training step.
  """
  best = max(pipeline_results, key=lambda r: r['examples_per_s'])
  out = {'best_worker_count': best['worker_count'],
         'pipeline_best_examples_per_s': best['examples_per_s'],
         'pipeline_target_examples_per_s': PIPELINE_TARGET,
         'pipeline_pass': best['examples_per_s'] >= PIPELINE_TARGET,
         'ratio_target': RATIO_TARGET}
  if train_result is not None and config_pipeline is not None:
    out['ratio'] = config_pipeline['examples_per_s'] / train_result['examples_per_s']
    out['ratio_pass'] = out['ratio'] >= RATIO_TARGET
  return out


def write_json(path: str | pathlib.Path, report: dict[str, Any]) -> pathlib.Path:
  """Writes ``report`` to ``path`` atomically, creating the parent folder."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile('w', dir=path.parent, prefix=path.name + '.',
                                   suffix='.tmp', delete=False) as f:
    json.dump(report, f, indent=2)
    f.write('\n')
  os.replace(f.name, path)
  return path


def format_table(report: dict[str, Any]) -> str:
  """The short summary table printed last."""
  t = report['targets']
  rows = []
  for r in report['pipeline']:
    label = 'pipeline T={max_len} B={batch_size} workers={worker_count}'.format(**r)
    rows.append((label, f'{r["examples_per_s"]:.1f}', ''))
  verdict = lambda ok: 'PASS' if ok else 'FAIL'
  rows.append((f'pipeline best (workers={t["best_worker_count"]}) >= {PIPELINE_TARGET:,.0f}',
               f'{t["pipeline_best_examples_per_s"]:.1f}', verdict(t['pipeline_pass'])))
  train, at_config = report.get('train_step'), report.get('pipeline_at_config')
  if train is not None and at_config is not None:
    label = 'pipeline T={max_len} B={batch_size} workers={worker_count} (config)'.format(
        **at_config)
    rows.append((label, f'{at_config["examples_per_s"]:.1f}', ''))
    label = 'train step T={max_len} B={global_batch} ({platform} x{num_devices})'.format(**train)
    rows.append((label, f'{train["examples_per_s"]:.1f}',
                 f'{train["median_step_s"] * 1e3:.1f} ms/step'))
    rows.append((f'ratio pipeline / train step >= {RATIO_TARGET:.0f}x', f'{t["ratio"]:.1f}x',
                 verdict(t['ratio_pass'])))
  lines = [f'{"measurement":<46}{"examples/s":>12}  result']
  lines += [f'{label:<46}{value:>12}  {result}'.rstrip() for label, value, result in rows]
  return '\n'.join(lines)


def run(*, dataset_dir: str | pathlib.Path | None, workdir: str | pathlib.Path, config,
        worker_counts: Sequence[int], batch_size: int = 32, max_len: int = 300,
        max_text_len: int = 32, num_batches: int = 50, warmup_batches: int = 3,
        train_steps: int = 10, train_warmup: int = 2, log=print) -> dict[str, Any]:
  """All three measurements; returns the report (``config=None`` skips the training step)."""
  if not worker_counts:
    raise ValueError('worker_counts: give at least one worker count, e.g. 0,1,2.')
  dataset_dir = pathlib.Path(dataset_dir) if dataset_dir else synthetic_dataset_dir(workdir)
  artifacts = pipeline.load_artifacts(dataset_dir)
  log(f'data: {dataset_dir}')
  results = []
  for count in worker_counts:
    result = pipeline_throughput(dataset_dir, artifacts, batch_size=batch_size, max_len=max_len,
                                 max_text_len=max_text_len, worker_count=count,
                                 num_batches=num_batches, warmup=warmup_batches)
    log(f'pipeline workers={count}: {result["examples_per_s"]:.1f} examples/s '
        f'({num_batches} batches of {batch_size} in {result["seconds"]:.2f} s; '
        f'mean valid rows {result["mean_valid_rows"]:.0f}/{max_len}; main process CPU '
        f'{result["main_process_cpu_ms_per_example"]:.2f} ms/example; load average '
        f'{_nan_if_none(result["load_average_before"]):.2f})')
    results.append(result)
  train = at_config = None
  if config is not None:
    at_config = pipeline_throughput(
        dataset_dir, artifacts, batch_size=config.train.batch_size, max_len=config.data.max_len,
        max_text_len=config.data.max_text_len, worker_count=config.data.worker_count,
        num_batches=num_batches, warmup=warmup_batches)
    log(f'pipeline at the config (T={config.data.max_len}, B={config.train.batch_size}): '
        f'{at_config["examples_per_s"]:.1f} examples/s')
    train = train_step_throughput(config, artifacts, num_steps=train_steps, warmup=train_warmup)
    log(f'train step: median {train["median_step_s"] * 1e3:.1f} ms over {train_steps} steps '
        f'(compile {train["compile_s"]:.1f} s), {train["examples_per_s"]:.1f} examples/s')
  return {'machine': machine_info(), 'dataset_dir': str(dataset_dir), 'pipeline': results,
          'pipeline_at_config': at_config, 'train_step': train,
          'targets': targets(results, train, at_config)}


def main() -> None:
  """The command line; flags are defined here so that importing this module defines none."""
  from absl import app
  from absl import flags
  from absl import logging
  from ml_collections import config_flags

  out = flags.DEFINE_string('out', None, 'JSON file the figures are written to.', required=True)
  dataset_dir = flags.DEFINE_string('dataset_dir', None, 'A built TFDS version folder; default: '
                                    'the synthetic set under --workdir.')
  workdir = flags.DEFINE_string('workdir', '/tmp/finedual_benchmark',
                                'Where the synthetic data set is built and reused.')
  config = config_flags.DEFINE_config_file(
      'config', importlib.util.find_spec('experiments.default').origin,
      'Experiment config whose training step is measured.', lock_config=True)
  worker_counts = flags.DEFINE_list('worker_counts', ['0', '1', '2'], 'grain worker counts.')
  batch_size = flags.DEFINE_integer('batch_size', 32, 'Pipeline batch size.', lower_bound=1)
  max_len = flags.DEFINE_integer('max_len', 300, 'Pipeline motion rows T.', lower_bound=1)
  max_text_len = flags.DEFINE_integer('max_text_len', 32, 'Pipeline tokens per text.',
                                      lower_bound=2)
  num_batches = flags.DEFINE_integer('num_batches', 50, 'Timed pipeline batches per worker '
                                     'count.', lower_bound=1)
  warmup_batches = flags.DEFINE_integer('warmup_batches', 3, 'Untimed pipeline batches first.',
                                        lower_bound=0)
  train_steps = flags.DEFINE_integer('train_steps', 10, 'Timed training steps.', lower_bound=10)
  train_warmup = flags.DEFINE_integer('train_warmup', 2, 'Untimed training steps first (the '
                                      'first compiles).', lower_bound=1)

  def benchmark(argv) -> None:
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not flags.FLAGS['verbosity'].present:  # TFDS logs every data set open at INFO.
      logging.set_verbosity(logging.WARNING)
    try:
      counts = [int(c) for c in worker_counts.value]
    except ValueError as e:
      raise app.UsageError(f'--worker_counts: expected integers such as 0,1,2, found '
                           f'{worker_counts.value}.') from e
    report = run(dataset_dir=dataset_dir.value, workdir=workdir.value, config=config.value,
                 worker_counts=counts, batch_size=batch_size.value, max_len=max_len.value,
                 max_text_len=max_text_len.value, num_batches=num_batches.value,
                 warmup_batches=warmup_batches.value, train_steps=train_steps.value,
                 train_warmup=train_warmup.value)
    print(f'wrote {write_json(out.value, report)}')
    print(format_table(report), flush=True)

  app.run(benchmark)


if __name__ == '__main__':
  host_memory.reexec_for_host_memory()
  main()
