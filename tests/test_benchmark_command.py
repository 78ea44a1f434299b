"""python -m finedual_jax.benchmark: FLOP counting, the figures of a tiny run, its table and
JSON, and bad command lines. Timings are printed by the command, never asserted here."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from finedual_jax import benchmark
from finedual_jax import generation
from finedual_jax import xla_cpu
from finedual_jax.data import benchmark as data_benchmark
from finedual_jax.data import pipeline
from finedual_jax.models import layers


def test_model_flops_count_every_chunk_of_the_attention_loop(monkeypatch):
  from finedual_jax.models import chunked_attention
  monkeypatch.setattr(chunked_attention, 'CHUNK_BYTES', 4 * 40 * 40 * 2)  # 4 chunks of 1 example.
  q = jnp.ones((4, 40, 2, 8))
  mask = jnp.ones((4, 1, 1, 40), bool)
  build = lambda: jax.jit(lambda q: layers.attention(q, q, q, mask=mask))
  counted = data_benchmark.model_flops(build, q)
  # The two matmuls of attention: 2 x (2 * 4 * 2 * 40 * 40 * 8) FLOPs, plus softmax.
  assert counted >= 4 * 4 * 2 * 40 * 40 * 8
  chunked = build().lower(q).cost_analysis()  # auto: chunked on CPU, a loop.
  assert chunked['flops'] < counted  # Why model_flops traces textbook attention.


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp('benchmark')


@pytest.fixture(scope='module')
def tiny_report(workdir):
  """A real run, except that the peak measured after the models reads twice the one before
  (as if the machine had been busy at the start), so the MFUs must be re-expressed."""
  lines, measured = [], []
  real_peak = benchmark.matmul_peak

  def peak_twice_as_high_at_the_end():
    peak = real_peak() if not measured else {k: 2 * v for k, v in measured[0].items()}
    measured.append(peak)
    return peak

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(benchmark, 'matmul_peak', peak_twice_as_high_at_the_end)
    # One example at a time, as a CPU samples at the bench size (the tiny model would get its
    # whole batch): the sampling FLOPs must still count every example.
    patch.setenv(generation.CHUNK_ENV, '1')
    report = benchmark.run(
        configs=benchmark.bench_configs(['intergen'], ['tiny']), workdir=str(workdir),
        train_steps=10, train_seconds=1.0, sample_batches=[1, 2], sample_length=16,
        ddim_steps=3, pipeline_batches=2, profile_dir=str(workdir / 'profiles'),
        log=lines.append)
  return report, lines


def test_tiny_run_reports_every_figure(tiny_report):
  report, lines = tiny_report
  assert report['peak']['peak_flops_per_s'] > 0 and report['peak']['bf16_peak_flops_per_s'] > 0
  # Measured before and after the models; every MFU is against the better of the two.
  start, end = report['peak_measurements']
  assert end['peak_flops_per_s'] == 2 * start['peak_flops_per_s'] and report['peak'] == end
  assert [line.split(':')[0] for line in lines if line.startswith('reference peak')] == [
      'reference peak (start; the MFUs below are against it until the end)',
      'reference peak (end)']
  assert report['pipeline']['examples_per_s'] > 0
  # One model keeps the suite short: the figures are computed the same way for every model.
  assert [(r['model'], r['size']) for r in report['training']] == [('intergen', 'tiny')]
  for r in report['training']:
    assert r['flops_per_step'] > 0 and r['median_step_s'] > 0 and r['examples_per_s'] > 0
    assert r['peak_flops_per_s'] == report['peak']['peak_flops_per_s']  # float32 run.
    assert r['mfu'] == pytest.approx(r['achieved_flops_per_s'] / r['peak_flops_per_s'])
    assert 0 <= r['data_wait_fraction'] < 1
    # ~14 ms steps repeat until each kind (alone, in the loop) has run a second.
    assert r['num_steps'] > 10 and r['compute_seconds'] >= 1.0
    assert r['loop_median_step_s'] > 0
    assert r['compute_dtype'] == 'float32' and r['host_rss_bytes'] > 0
    assert r['host_rss_since'] in ('model', 'process start')
    assert r['data_in_memory'] is True  # The real loop's default: records decoded once.
  # Sampling: every model and batch; a batch of 2 does twice the work of 1.
  sampling = {(r['model'], r['batch']): r for r in report['sampling']}
  assert set(sampling) == {('intergen', 1), ('intergen', 2)}
  one, two = sampling['intergen', 1], sampling['intergen', 2]
  assert one['ddim_steps'] == 3 and one['length'] == 16
  # ... also where the sampler runs the batch one example at a time.
  assert one['chunk'] == 1 and two['chunk'] == 1
  assert two['flops'] == pytest.approx(2 * one['flops'], rel=0.05)
  float32_peak = report['peak']['peak_flops_per_s']
  assert one['mfu'] == pytest.approx(one['flops'] / one['seconds'] / float32_peak)
  # On CPU without a compilation cache: oneDNN wherever this XLA puts dots there (not JAX 0.8.2).
  onednn = xla_cpu.onednn_dots_available()
  assert one['onednn_dots'] is onednn and two['onednn_dots'] is onednn
  table = benchmark.format_table(report)
  assert 'intergen/tiny' in table and 'sampling (DDIM)' in table
  assert any(line.startswith('train intergen/tiny') for line in lines)


def test_profile_dir_breaks_each_training_step_down_by_component(tiny_report, workdir):
  report, lines = tiny_report
  profile = report['training'][0]['profile']
  parts = profile['components']
  # InterGen's blocks: attention and its projections, feed-forward, AdaLN; the step's named
  # scopes: losses and optimizer. It has no graph and no distance predictor.
  for name in ('attention projections', 'attention', 'feed-forward', 'AdaLN', 'text encoder',
               'losses', 'optimizer'):
    assert parts[name] > 0, name
  assert parts['interaction graph'] == 0 and parts['distance predictor'] == 0
  assert sum(parts.values()) == pytest.approx(profile['op_seconds_per_call'])
  # Matrix products by component: the step's dots, counted per run, come to about the FLOPs
  # of XLA's cost analysis (which also counts element-wise work, with textbook attention).
  flops = profile['flops_per_call']
  for name in ('attention projections', 'attention', 'feed-forward', 'text encoder'):
    assert flops[name] > 0, name
  assert flops['losses'] == flops['optimizer'] == flops['interaction graph'] == 0
  step_flops = report['training'][0]['flops_per_step']
  assert 0.8 * step_flops < sum(flops.values()) < 1.3 * step_flops
  assert profile['trace_dir'] == str(workdir / 'profiles' / 'intergen_tiny')
  assert list((workdir / 'profiles' / 'intergen_tiny').glob('**/*.xplane.pb'))
  assert any(line.startswith('profile intergen/tiny: ') for line in lines)
  assert 'where intergen/tiny spends its step: ' in benchmark.format_table(report)


def test_profile_dir_breaks_the_first_sampling_run_down_by_component(tiny_report, workdir):
  report, lines = tiny_report
  first, second = report['sampling']
  assert second['profile'] is None  # One traced run per model: batch 32 would take minutes.
  profile = first['profile']
  parts = profile['components']
  for name in ('attention projections', 'attention', 'feed-forward', 'AdaLN', 'text encoder'):
    assert parts[name] > 0, name
  # A forward pass: no losses, no optimizer.
  assert parts['losses'] == parts['optimizer'] == 0
  assert sum(parts.values()) == pytest.approx(profile['op_seconds_per_call'])
  # The DDIM loop's products, counted per run of the loop body, come to about the FLOPs the
  # benchmark counts for the run (the body's cost analysis times the DDIM steps).
  flops = profile['flops_per_call']
  assert flops['feed-forward'] > 0 and flops['losses'] == 0
  assert 0.8 * first['flops'] < sum(flops.values()) < 1.3 * first['flops']
  trace_dir = workdir / 'profiles' / 'intergen_tiny_sampling'
  assert profile['trace_dir'] == str(trace_dir) and list(trace_dir.glob('**/*.xplane.pb'))
  assert any(line.startswith('profile sampling intergen/tiny batch 1: ') for line in lines)
  table = benchmark.format_table(report)
  assert 'where intergen/tiny spends a DDIM run (batch 1): ' in table


def test_training_flops_do_not_count_what_remat_recomputes(tiny_report, workdir):
  (_, config), = benchmark.bench_configs(['intergen'], ['tiny'])
  with config.unlocked():
    config.model.remat = True
  artifacts = pipeline.load_artifacts(data_benchmark.synthetic_dataset_dir(workdir))
  remat = data_benchmark.train_step_throughput(config, artifacts, num_steps=1, warmup=1,
                                               min_seconds=0.0)
  assert remat['num_steps'] == 1
  plain, = [r for r in tiny_report[0]['training'] if r['model'] == 'intergen']
  # The remat program recomputes the blocks' forward passes (~19% more FLOPs in its HLO).
  assert remat['flops_per_step'] == pytest.approx(plain['flops_per_step'], rel=1e-6)


def test_report_is_json(tiny_report, tmp_path):
  path = data_benchmark.write_json(tmp_path / 'bench.json', tiny_report[0])
  assert json.loads(path.read_text())['training'][0]['model'] == 'intergen'


def test_the_best_of_several_peak_measurements_is_kept_field_by_field():
  loaded = {'peak_flops_per_s': 228e9, 'bf16_peak_flops_per_s': 1500e9, 'n': 2048}
  quiet = {'peak_flops_per_s': 330e9, 'bf16_peak_flops_per_s': 930e9, 'n': 2048}
  assert benchmark.best_peak([loaded, quiet]) == {
      'peak_flops_per_s': 330e9, 'bf16_peak_flops_per_s': 1500e9, 'n': 2048}


def test_mixed_precision_is_measured_against_the_bfloat16_peak():
  peak = {'peak_flops_per_s': 300e9, 'bf16_peak_flops_per_s': 1400e9}
  assert benchmark.reference_peak(peak, 'float32') == 300e9
  assert benchmark.reference_peak(peak, 'bfloat16') == 1400e9
  with pytest.raises(ValueError, match="found 'float16'"):
    benchmark.reference_peak(peak, 'float16')


def test_table_labels_bfloat16_rows_and_names_both_peaks():
  row = {'model': 'finedual', 'size': 'bench', 'platform': 'cpu', 'median_step_s': 2.0,
         'examples_per_s': 8.0, 'flops_per_step': 1e12, 'mfu': 0.5, 'data_wait_fraction': 0.0,
         'host_rss_bytes': 2**30, 'device_memory_bytes': None}
  sample = {'model': 'finedual', 'size': 'bench', 'batch': 1, 'seconds': 30.0, 'flops': 5e12,
            'mfu': 0.6}
  report = {'machine': {'huge_pages': True, 'transparent_huge_pages': 'madvise'},
            'peak': {'peak_flops_per_s': 300e9, 'bf16_peak_flops_per_s': 1400e9},
            'pipeline': {'examples_per_s': 1000.0},
            'training': [dict(row, compute_dtype='float32'), dict(row, compute_dtype='bfloat16')],
            'sampling': [dict(sample, compute_dtype='bfloat16')]}
  table = benchmark.format_table(report)
  assert '300.0 GFLOP/s (float32)' in table and '1400.0 GFLOP/s (bfloat16' in table
  rows = [line.split()[0] for line in table.splitlines()[2:]]
  assert rows[:2] == ['finedual/bench', 'finedual/bench/bf16']
  assert table.splitlines()[-1].split()[0] == 'finedual/bench/bf16'


def test_bench_configs_set_the_compute_dtype_and_reject_unknown_names():
  (size, config), = benchmark.bench_configs(['in2in'], ['bench'], compute_dtype='bfloat16')
  assert size == 'bench' and config.model.compute_dtype == 'bfloat16'
  assert (config.model.width, config.train.batch_size, config.data.max_len) == (512, 16, 300)
  with pytest.raises(ValueError, match="unknown model 'gpt'"):
    benchmark.bench_configs(['gpt'], ['tiny'])


def test_memory_check_compiles_the_step_for_the_device_it_is_given():
  # Compiled, not run: arguments (the state and the batch), outputs and temporaries.
  device = jax.devices()[-1]
  memory = benchmark.training_memory('intergen', size='tiny', batch=4, max_len=16, device=device)
  assert memory['device'] == device.device_kind
  assert (memory['size'], memory['batch'], memory['max_len']) == ('tiny', 4, 16)
  assert 0 < memory['argument_bytes'] < memory['bytes']
  assert 0 < memory['temp_bytes'] < memory['bytes']


def test_topology_compiles_run_in_a_new_process_without_jemalloc(monkeypatch):
  # libtpu's compiler overflowed a thread's stack with jemalloc preloaded; the child runs on
  # the C library's allocator, and this process keeps its environment.
  monkeypatch.setenv('LD_PRELOAD', 'libjemalloc.so.2')
  assert benchmark._in_a_fresh_process(os.getenv, 'LD_PRELOAD') is None
  assert benchmark._in_a_fresh_process(os.getpid) != os.getpid()
  assert os.environ['LD_PRELOAD'] == 'libjemalloc.so.2'


@pytest.mark.parametrize('args, message', [
    (['--models=gpt'], "unknown model 'gpt'"),
    (['--config=experiments/default.py:size=tiny', '--config.train.batch_size=0'],
     'config.train.batch_size = 0'),
    (['--compute_dtype=float16'], 'compute_dtype'),
    (['--memory_topology=v5e:2x2'], 'add --memory_check'),
    # Without libtpu (as in CI), and with it (no such topology): why, and what it needs.
    (['--memory_check', '--memory_topology=v5e:3x3'], 'needs libtpu (pip install "jax[tpu]"'),
])
def test_bad_command_lines_fail_before_measuring(args, message, tmp_path):
  result = subprocess.run([sys.executable, '-m', 'finedual_jax.benchmark',
                           f'--out={tmp_path / "b.json"}', f'--workdir={tmp_path}', *args],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'b.json').exists()


def test_the_table_names_the_host_allocator():
  assert benchmark._host_allocator({'host_allocator': 'jemalloc', 'malloc_conf': 'narenas:2'}) == (
      'host allocator jemalloc (MALLOC_CONF narenas:2)')
  glibc = {'host_allocator': 'glibc', 'huge_pages': True, 'transparent_huge_pages': 'madvise'}
  assert benchmark._host_allocator(glibc) == 'host huge pages on (kernel: madvise)'
  assert benchmark._host_allocator({**glibc, 'keeps_freed_memory': True}) == (
      'host huge pages on (kernel: madvise), freed host memory kept')
