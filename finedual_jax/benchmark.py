"""How close to the hardware training and sampling run: examples/s, FLOPs, MFU, memory.

    python -m finedual_jax.benchmark --out bench.json                    # everything (long on CPU)
    python -m finedual_jax.benchmark --out quick.json --sizes tiny --sample_batches 1,4
    python -m finedual_jax.benchmark --out gpu.json --compute_dtype bfloat16      # on a GPU/TPU
    python -m finedual_jax.benchmark --out paper.json \
        --config experiments/finedual.py:size=paper --config.train.batch_size=32

In one run it measures:

* the reference peaks: fp32 matmul of large square matrices with NumPy/BLAS and with
  ``jnp.dot`` (the better of the two), and the same ``jnp.dot`` on bfloat16 inputs (float32
  accumulation), the reference of the runs that compute in bfloat16; each is measured before
  and after the models and the better kept (``best_peak``), and every MFU is against it;
* per model (FineDual, the InterGen and in2IN-style baselines) and size (``bench``: width 512,
  8 layers in total, batch 16, T = 300; ``tiny``): the training step's examples/s and median
  step time (≥ 10 steps after warm-up, blocking each step), its FLOPs from XLA's cost analysis
  (of the model with textbook attention: ``data.benchmark.model_flops``), MFU = achieved
  FLOP/s / the reference peak of the compute dtype, memory (host RSS on CPU; the compiled
  program's arguments + outputs + temporaries elsewhere), and the fraction of step time spent
  waiting for data when the step runs inside the trainer's loop on real batches;
* sampling: one full DDIM run (50 steps, all guidance branches in one forward pass) at T = 300
  for batches of 1, 4 and 32: seconds per batch and MFU;
* the input pipeline's examples/s at T = 300;
* with ``--profile_dir``, where the time goes: two training steps and one DDIM run (of the
  first sampling batch) per model traced with ``jax.profiler``, their op time split by model
  component (``finedual_jax/profiling.py``).

It prints a table last and writes every figure to ``--out``. On a GPU/TPU machine run the same
command there (``pip install -U "jax[cuda12]"`` or ``"jax[tpu]"`` first); the reference peaks
are then the measured ``jnp.dot`` rates (compare them with the vendor's figures). XLA's cost
analysis counts a loop body once, so the sampler's FLOPs are the body's times the number of
DDIM steps. FLOPs count matmuls and elementwise arithmetic, not the
exponentials of softmax/SiLU or random-bit generation, which also take time on a CPU.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from finedual_jax import host_memory
from finedual_jax import profiling
from finedual_jax.data import benchmark as data_benchmark
from finedual_jax.data import pipeline

MODELS = {'finedual': 'experiments.finedual', 'intergen': 'experiments.intergen',
          'in2in': 'experiments.in2in'}
SIZES = ('bench', 'tiny')
TRAIN_MFU_TARGETS = {'bench': 0.60, 'paper': 0.70}
SAMPLING_MFU_TARGET = 0.85


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
  """Matmul GFLOP/s of n x n matrices, best of ``repeats``: float32 with NumPy (BLAS) and with
  jnp.dot (``peak_flops_per_s``: the better of the two), and bfloat16 inputs with float32
  accumulation through jnp.dot (``bf16_peak_flops_per_s``: the reference for mixed precision,
  which runs on other units than float32 on GPUs, TPUs and CPUs with AMX)."""
  import jax
  import jax.numpy as jnp
  a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
  b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
  flops = 2.0 * n ** 3
  a @ b
  numpy_s = min(timed(lambda: a @ b) for _ in range(repeats))
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))

  def jax_seconds(dtype) -> float:
    ja, jb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    dot(ja, jb).block_until_ready()
    return min(timed(lambda: dot(ja, jb).block_until_ready()) for _ in range(repeats))

  jax_s, bf16_s = jax_seconds(jnp.float32), jax_seconds(jnp.bfloat16)
  return {'n': n, 'numpy_flops_per_s': flops / numpy_s, 'jax_flops_per_s': flops / jax_s,
          'peak_flops_per_s': max(flops / numpy_s, flops / jax_s),
          'bf16_peak_flops_per_s': flops / bf16_s}


def reference_peak(peak: dict[str, float], compute_dtype: str) -> float:
  """The peak a run computing in ``compute_dtype`` is measured against (its MFU's divisor)."""
  if compute_dtype == 'bfloat16':
    return peak['bf16_peak_flops_per_s']
  if compute_dtype == 'float32':
    return peak['peak_flops_per_s']
  raise ValueError(f'compute_dtype: expected float32 or bfloat16, found {compute_dtype!r}.')


def best_peak(measurements: Sequence[dict[str, float]]) -> dict[str, float]:
  """Each field's largest value over ``matmul_peak`` measurements. Load from other processes on
  a shared machine only lowers a measured rate: on a 2-core Xeon one run measured 228.6 GFLOP/s
  where others measured 308-333, which read a FineDual step's MFU as 62% instead of ~43%. The
  benchmark therefore measures the peak before and after the models and keeps the better."""
  return {key: max(m[key] for m in measurements) for key in measurements[0]}


def _against(rows: list[dict[str, Any]], peak: dict[str, float]) -> None:
  """Re-expresses each row's MFU against ``peak`` (the reference of the row's compute dtype)."""
  for row in rows:
    reference = reference_peak(peak, row['compute_dtype'])
    row['mfu'] *= row['peak_flops_per_s'] / reference
    row['peak_flops_per_s'] = reference


def timed(fn) -> float:
  """Seconds ``fn()`` takes (it must block on its own results)."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def bench_config(model: str, size: str):
  """The experiment config of ``model`` at ``size``: 'tiny' as shipped, or 'bench' = the paper
  structure (8 layers in total) at width 512, batch 16, T = 300, on one device."""
  if model not in MODELS:
    raise ValueError(f'--models: unknown model {model!r}; expected some of {sorted(MODELS)}.')
  if size not in SIZES:
    raise ValueError(f'--sizes: unknown size {size!r}; expected some of {list(SIZES)}.')
  module = importlib.import_module(MODELS[model])
  config = module.get_config(f'size={"tiny" if size == "tiny" else "paper"},dataset=synthetic')
  config.unlock()
  config.parallel.num_devices = 1
  config.data.source = 'tfds'
  if size == 'bench':
    config.model.update(width=512, num_heads=8, ff_dim=1024, text_width=256, text_layers=2,
                        text_heads=4)
    if model == 'finedual':
      config.model.update(graph_hidden=128, embed_dim=256)
    config.data.max_len = 300
    config.data.max_text_len = 32
    config.train.batch_size = 16
  config.lock()
  return config


def sampling_throughput(config, artifacts: pipeline.Artifacts, *, batch_sizes: Sequence[int],
                        length: int, ddim_steps: int, peak: float,
                        profile_dir: str | None = None) -> list[dict[str, Any]]:
  """Seconds and MFU of one full guided DDIM run per batch size (untrained weights).

  With ``profile_dir``, one more run of the first batch size is traced into it and its op time
  broken down by model component (its result's ``profile``; None for the other sizes).
  """
  import jax
  import jax.numpy as jnp

  from finedual_jax import generation
  from finedual_jax import trainer
  from finedual_jax import xla_cpu
  from finedual_jax.diffusion.schedule import Schedule
  from finedual_jax.models import precision
  from finedual_jax.models.factory import build_model

  model = build_model(config.model, vocab_size=artifacts.tokenizer.vocab_size,
                      max_text_len=config.data.max_text_len,
                      feature_dim=artifacts.representation.feature_dim)
  params = trainer.init_params(model, config, jax.random.key(0))
  make_sampler = lambda chunk=None: generation.make_sampler(
      model, Schedule.cosine(config.diffusion.num_steps),
      w_overall=config.diffusion.guidance_overall,
      w_individual=config.diffusion.guidance_individual, ddim_steps=ddim_steps,
      compute_dtype=precision.compute_dtype(config.model), chunk=chunk)
  sample_fn = make_sampler()
  onednn_dots = xla_cpu.forward_compiler_options() is not None  # What make_sampler compiled with.
  chunk = generation.sample_chunk_size(length, model.width)  # What make_sampler uses.
  results = []
  for batch in batch_sizes:
    noise = jnp.zeros((batch, length, 2, artifacts.representation.feature_dim))
    mask = jnp.ones((batch, length))
    tokens = jnp.full((batch, config.data.max_text_len), 5, jnp.int32)
    persons = jnp.full((batch, 2, config.data.max_text_len), 5, jnp.int32)
    args = (params, noise, mask, tokens, persons)
    start = time.perf_counter()
    compiled = sample_fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    # The DDIM body x steps; the whole batch in one body (a chunk loop's body counts once).
    flops = data_benchmark.model_flops(lambda: make_sampler(chunk=0), *args) * ddim_steps
    seconds = timed(lambda: compiled(*args).block_until_ready())
    if seconds < 2.0:  # Short runs are noisy: best of three more.
      seconds = min(timed(lambda: compiled(*args).block_until_ready()) for _ in range(3))
    profile = None
    if profile_dir is not None and not results:  # Traced after the timed run, not during it.
      profile = profiling.profile_components(compiled, args, trace_dir=profile_dir, calls=1)
    results.append({'model': config.model.name, 'batch': batch, 'length': length,
                    'ddim_steps': ddim_steps, 'compile_s': compile_s, 'seconds': seconds,
                    'flops': flops, 'mfu': flops / seconds / peak, 'peak_flops_per_s': peak,
                    'compute_dtype': config.model.get('compute_dtype', 'float32'),
                    'onednn_dots': onednn_dots, 'chunk': min(chunk or batch, batch),
                    'profile': profile})
  return results


def compile_only_devices(topology: str) -> list[Any]:
  """The chips of the TPU ``topology`` (e.g. 'v5e:2x2', whose chips have 16 GiB of HBM) as
  devices to compile for without having them: XLA's TPU compiler from libtpu, on any host
  (``pip install "jax[tpu]"``). One process at a time may use libtpu."""
  from jax.experimental import topologies

  try:
    return list(topologies.get_topology_desc(topology_name=topology, platform='tpu').devices)
  except RuntimeError as e:
    raise ValueError(
        f'--memory_topology={topology}: cannot compile for this TPU topology here ({e}). It '
        'needs libtpu (pip install "jax[tpu]"; no TPU needed) and a topology name such as '
        'v5e:2x2 or v4:2x2x1.') from None


def training_memory(model: str = 'finedual', *, batch: int = 32, max_len: int = 300,
                    remat: bool = False, vocab_size: int = 1000, size: str = 'paper',
                    device: Any = None) -> dict[str, Any]:
  """Bytes the training step of ``model`` at ``size`` needs on one device at ``batch``
  (compiled, not run), on ``device`` (default: this process's first device; a device of
  ``compile_only_devices`` compiles for a TPU chip from any host).

  Arguments + outputs + temporaries of the compiled step, minus donated buffers, from XLA's
  memory analysis: what has to fit in device memory. Attention is XLA's (the fused CPU kernel
  exists only for CPUs) unless the device is this machine's CPU.
  """
  import jax
  import jax.numpy as jnp

  from finedual_jax import trainer
  from finedual_jax.data import batch as batch_lib
  from finedual_jax.diffusion.schedule import Schedule
  from finedual_jax.models import layers
  from finedual_jax.models.factory import build_model
  from finedual_jax import parallel

  device = jax.devices()[0] if device is None else device
  config = importlib.import_module(MODELS[model]).get_config(f'size={size},dataset=synthetic')
  config.unlock()
  config.model.remat = remat
  config.train.batch_size = batch
  config.data.max_len = max_len
  config.lock()
  mesh = parallel.mesh_over([device])
  net = build_model(config.model, vocab_size=vocab_size, max_text_len=config.data.max_text_len)
  tx = trainer.make_optimizer(config)
  state = trainer.abstract_state(net, config, tx, mesh)
  rows = parallel.batch_sharding(mesh)
  batch_shapes = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
                  for k, (shape, dtype) in batch_lib.spec(batch, max_len,
                                                          config.data.max_text_len).items()}
  attention = 'auto' if device.platform == jax.default_backend() == 'cpu' else 'xla'
  start = time.perf_counter()
  with layers.attention_implementation(attention):
    step = parallel.data_parallel(trainer.make_train_step(
        net, tx, Schedule.cosine(config.diffusion.num_steps), config, jnp.zeros(262),
        jnp.ones(262)), mesh)
    memory = step.lower(state, batch_shapes).compile().memory_analysis()
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes +
           memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return {'model': model, 'size': size, 'batch': batch, 'max_len': max_len, 'remat': remat,
          'device': device.device_kind, 'compile_s': time.perf_counter() - start,
          'bytes': int(total), 'temp_bytes': int(memory.temp_size_in_bytes),
          'argument_bytes': int(memory.argument_size_in_bytes)}


def topology_memory(topology: str, **kwargs) -> dict[str, Any]:
  """``training_memory`` of the paper-scale FineDual step on one chip of the TPU ``topology``,
  compiled in a new process on the C library's allocator. With jemalloc preloaded (as the
  command lines do) libtpu 0.0.42's compiler overflowed a thread's stack compiling the remat
  step here (twice; it compiled without jemalloc), and only one process at a time may hold
  libtpu."""
  return _in_a_fresh_process(_topology_memory, topology, kwargs)


def _topology_memory(topology: str, kwargs: dict[str, Any]) -> dict[str, Any]:
  return training_memory('finedual', device=compile_only_devices(topology)[0], **kwargs)


def _device_kind(topology: str) -> str:
  return compile_only_devices(topology)[0].device_kind


def _in_a_fresh_process(fn, *args):
  """``fn(*args)`` in a new Python process (spawned, so no JAX state is inherited, and without
  jemalloc); its exceptions are raised here."""
  import concurrent.futures
  import multiprocessing

  context = multiprocessing.get_context('spawn')
  saved = dict(os.environ)
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
    try:
      os.environ.clear()  # The worker starts at submit, with this environment.
      os.environ.update(host_memory.without_jemalloc(saved))
      future = pool.submit(fn, *args)
    finally:
      os.environ.clear()
      os.environ.update(saved)
    try:
      return future.result()
    except concurrent.futures.process.BrokenProcessPool:
      raise RuntimeError(f'benchmark: the process running {fn.__name__}{args} died (its '
                         'output above says why).') from None


def bench_configs(models: Sequence[str], sizes: Sequence[str], *,
                  compute_dtype: str = 'float32') -> list[tuple[str, Any]]:
  """[(size, config)] for every model and size, computing in ``compute_dtype``."""
  out = []
  for size in sizes:
    for model in models:
      config = bench_config(model, size)
      with config.unlocked():
        config.model.compute_dtype = compute_dtype
      out.append((size, config))
  return out


def run(*, configs: Sequence[tuple[str, Any]], workdir: str, train_steps: int,
        sample_batches: Sequence[int], sample_length: int, ddim_steps: int,
        pipeline_batches: int, train_seconds: float = 3.0, memory_check: bool = False,
        memory_topology: str | None = None, profile_dir: str | None = None,
        log=print) -> dict[str, Any]:
  """Measures every (size label, config) of ``configs``; sampling for the 'bench' size, or for
  every config when none is 'bench'. With ``profile_dir``, each training step is also traced
  into ``profile_dir/<model>_<size>`` and its op time broken down by component. With
  ``memory_check``, the paper-scale FineDual step's memory on this process's first device, or
  on one chip of the TPU topology ``memory_topology`` (``topology_memory``)."""
  import jax

  def measure_peak(when: str) -> dict[str, float]:
    peak = matmul_peak()
    log(f'reference peak ({when}): float32 NumPy {peak["numpy_flops_per_s"] / 1e9:.1f} GFLOP/s, '
        f'jnp.dot {peak["jax_flops_per_s"] / 1e9:.1f} GFLOP/s; bfloat16 jnp.dot '
        f'{peak["bf16_peak_flops_per_s"] / 1e9:.1f} GFLOP/s ({jax.devices()[0].platform})')
    return peak

  peak = measure_peak('start; the MFUs below are against it until the end')
  dataset_dir = data_benchmark.synthetic_dataset_dir(workdir)
  artifacts = pipeline.load_artifacts(dataset_dir)
  data_rate = data_benchmark.pipeline_throughput(
      dataset_dir, artifacts, batch_size=32, max_len=300, worker_count=0,
      num_batches=pipeline_batches, warmup=2)
  log(f'input pipeline T=300: {data_rate["examples_per_s"]:.0f} examples/s')
  training, sampling = [], []
  sample_all = all(size != 'bench' for size, _ in configs)
  for size, config in configs:
    model = config.model.name
    since_model = data_benchmark.reset_peak_rss()
    trace_dir = None if profile_dir is None else os.path.join(profile_dir, f'{model}_{size}')
    result = data_benchmark.train_step_throughput(config, artifacts, num_steps=train_steps,
                                                  warmup=2, min_seconds=train_seconds,
                                                  profile_dir=trace_dir)
    # Peak host memory while this model compiled and trained (with what earlier models left
    # resident), or since process start where the OS cannot reset the peak.
    dtype = config.model.get('compute_dtype', 'float32')
    reference = reference_peak(peak, dtype)
    result.update(size=size, mfu=result['achieved_flops_per_s'] / reference,
                  peak_flops_per_s=reference, host_rss_bytes=data_benchmark.peak_rss_bytes(),
                  host_rss_since='model' if since_model else 'process start',
                  compute_dtype=dtype)
    training.append(result)
    log(f'train {model}/{size}: {result["median_step_s"] * 1e3:.0f} ms/step, '
        f'{result["examples_per_s"]:.1f} examples/s, {result["flops_per_step"] / 1e9:.1f} '
        f'GFLOP, MFU {result["mfu"]:.1%}, data wait {result["data_wait_fraction"]:.1%}')
    if result['profile'] is not None:
      log(profiling.format_components(f'profile {model}/{size}', result['profile']))
    if size == 'bench' or sample_all:
      for r in sampling_throughput(config, artifacts, batch_sizes=sample_batches,
                                   length=min(sample_length, config.data.max_len),
                                   ddim_steps=ddim_steps, peak=reference,
                                   profile_dir=None if trace_dir is None
                                   else f'{trace_dir}_sampling'):
        r['size'] = size
        sampling.append(r)
        log(f'sample {model}/{size} batch {r["batch"]}: {r["seconds"]:.1f} s, MFU '
            f'{r["mfu"]:.1%}')
        if r['profile'] is not None:
          log(profiling.format_components(f'profile sampling {model}/{size} batch {r["batch"]}',
                                          r['profile']))
  memory = []
  if memory_check:
    for remat in (False, True):
      memory.append(training_memory('finedual', remat=remat) if memory_topology is None
                    else topology_memory(memory_topology, remat=remat))
      log(f'paper FineDual, batch 32, T=300, remat={remat}, on {memory[-1]["device"]}: '
          f'{memory[-1]["bytes"] / 2**30:.2f} GiB (target: fits in 16 GiB)')
  peaks = [peak, measure_peak('end')]
  peak = best_peak(peaks)
  _against(training + sampling, peak)
  return {'machine': data_benchmark.machine_info(), 'peak': peak, 'peak_measurements': peaks,
          'pipeline': data_rate,
          'training': training, 'sampling': sampling, 'paper_memory': memory,
          'targets': {'train_mfu': TRAIN_MFU_TARGETS, 'sampling_mfu': SAMPLING_MFU_TARGET,
                      'data_wait_fraction': 0.05}}


def _label(result: dict[str, Any]) -> str:
  bf16 = result.get('compute_dtype') == 'bfloat16'
  return f'{result["model"]}/{result["size"]}' + ('/bf16' if bf16 else '')


def _host_allocator(machine: dict[str, Any]) -> str:
  if machine.get('host_allocator') == 'jemalloc':
    return f'host allocator jemalloc (MALLOC_CONF {machine.get("malloc_conf")})'
  return (f'host huge pages {"on" if machine.get("huge_pages") else "off"} '
          f'(kernel: {machine.get("transparent_huge_pages")})'
          f'{", freed host memory kept" if machine.get("keeps_freed_memory") else ""}')


def format_table(report: dict[str, Any]) -> str:
  machine = report['machine']
  lines = [f'reference peak {report["peak"]["peak_flops_per_s"] / 1e9:.1f} GFLOP/s (float32), '
           f'{report["peak"]["bf16_peak_flops_per_s"] / 1e9:.1f} GFLOP/s (bfloat16: the /bf16 '
           f'rows\' MFU); input '
           f'pipeline {report["pipeline"]["examples_per_s"]:.0f} examples/s at T=300; '
           f'{_host_allocator(machine)}',
           f'{"training":<22}{"ms/step":>9}{"ex/s":>8}{"GFLOP":>9}{"MFU":>7}{"wait":>7}'
           f'{"memory MiB":>12}']
  for r in report['training']:
    memory = r['host_rss_bytes'] if r['platform'] == 'cpu' else r['device_memory_bytes']
    lines.append(f'{_label(r):<22}{r["median_step_s"] * 1e3:>9.0f}'
                 f'{r["examples_per_s"]:>8.1f}{r["flops_per_step"] / 1e9:>9.1f}'
                 f'{r["mfu"]:>7.1%}{r["data_wait_fraction"]:>7.1%}{(memory or 0) / 2**20:>12.0f}')
  for r in report['training']:
    if r.get('profile'):
      lines.append(profiling.format_components(f'where {_label(r)} spends its step',
                                               r['profile']))
  for r in report.get('paper_memory', []):
    lines.append(f'paper FineDual B={r["batch"]} T={r["max_len"]} remat={r["remat"]} on '
                 f'{r["device"]}: {r["bytes"] / 2**30:.2f} GiB')
  if report['sampling']:
    lines.append(f'{"sampling (DDIM)":<22}{"batch":>9}{"s":>8}{"TFLOP":>9}{"MFU":>7}')
    for r in report['sampling']:
      lines.append(f'{_label(r):<22}{r["batch"]:>9}{r["seconds"]:>8.1f}'
                   f'{r["flops"] / 1e12:>9.2f}{r["mfu"]:>7.1%}')
    for r in report['sampling']:
      if r.get('profile'):
        lines.append(profiling.format_components(
            f'where {_label(r)} spends a DDIM run (batch {r["batch"]})', r['profile']))
  return '\n'.join(lines)


def main() -> None:
  from absl import app
  from absl import flags
  from absl import logging
  from ml_collections import config_flags

  from finedual_jax import config_checks

  out = flags.DEFINE_string('out', None, 'JSON file the figures are written to.', required=True)
  models = flags.DEFINE_list('models', list(MODELS), 'Models to measure.')
  sizes = flags.DEFINE_list('sizes', list(SIZES), 'Sizes: bench and/or tiny.')
  workdir = flags.DEFINE_string('workdir', '/tmp/finedual_benchmark',
                                'Where the synthetic data set is built and reused.')
  train_steps = flags.DEFINE_integer('train_steps', 10, 'Timed training steps.', lower_bound=10)
  train_seconds = flags.DEFINE_float(
      'train_seconds', 3.0, 'Short steps repeat until their compute adds up to this (each '
      'kind: alone and in the loop), for a data wait measured to about a per cent.',
      lower_bound=0.0)
  sample_batches = flags.DEFINE_list('sample_batches', ['1', '4', '32'], 'Sampling batches.')
  sample_length = flags.DEFINE_integer('sample_length', 300, 'Frames sampled.', lower_bound=2)
  ddim_steps = flags.DEFINE_integer('ddim_steps', 50, 'DDIM steps per sample.', lower_bound=1)
  pipeline_batches = flags.DEFINE_integer('pipeline_batches', 30, 'Timed pipeline batches.',
                                          lower_bound=1)
  compute_dtype = flags.DEFINE_enum(
      'compute_dtype', 'float32', ['float32', 'bfloat16'],
      'Compute dtype of the bench/tiny configs (bfloat16: mixed precision, for GPU/TPU).')
  config_flag = config_flags.DEFINE_config_file(
      'config', None, 'Measure this experiment config (with --config.FIELD=VALUE overrides) '
      'instead of --models x --sizes; its batch, length and devices are used as given.',
      lock_config=True)
  profile_dir = flags.DEFINE_string(
      'profile_dir', None, 'Also trace two training steps per model into this folder '
      '(<model>_<size>/, for TensorBoard/XProf/Perfetto) and one more DDIM run of the first '
      'sampling batch (<model>_<size>_sampling/), and print where their op time goes by model '
      'component (attention, feed-forward, graph, losses, optimizer, ...).')
  memory_check = flags.DEFINE_bool(
      'memory_check', False, 'Also compile (not run) the paper-scale FineDual step at batch 32, '
      'T=300, with and without remat, and report its device memory. On CPU XLA\'s memory '
      'analysis does not credit rematerialisation, so run this on the GPU/TPU in question, or '
      'name a TPU topology with --memory_topology.')
  memory_topology = flags.DEFINE_string(
      'memory_topology', None, 'With --memory_check: compile for one chip of this TPU topology '
      '(e.g. v5e:2x2, 16 GiB per chip) instead of this machine\'s device, from any host: it '
      'needs libtpu (pip install "jax[tpu]"), not a TPU. On a host without TPUs set '
      'JAX_PLATFORMS=cpu.')

  def benchmark(argv) -> None:
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    try:
      if memory_topology.value is not None and not memory_check.value:
        raise ValueError('--memory_topology names where --memory_check compiles; add '
                         '--memory_check.')
      batches = [int(b) for b in sample_batches.value]
      if config_flag.value is not None:
        config_checks.validate(config_flag.value)
        configs = [('config', config_flag.value)]
      else:  # Fails here, before any compilation, on a bad name.
        configs = bench_configs(models.value, sizes.value, compute_dtype=compute_dtype.value)
      if memory_topology.value is not None:
        _in_a_fresh_process(_device_kind, memory_topology.value)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    report = run(configs=configs, workdir=workdir.value,
                 train_steps=train_steps.value, train_seconds=train_seconds.value,
                 sample_batches=batches,
                 sample_length=sample_length.value, ddim_steps=ddim_steps.value,
                 pipeline_batches=pipeline_batches.value, memory_check=memory_check.value,
                 memory_topology=memory_topology.value, profile_dir=profile_dir.value)
    print(f'wrote {data_benchmark.write_json(out.value, report)}')
    print(format_table(report), flush=True)
    sys.stdout.flush()

  app.run(benchmark)


if __name__ == '__main__':
  host_memory.reexec_for_host_memory()
  main()
