"""Tests for the input-pipeline benchmark's measuring functions and report writer (no timings)."""

from __future__ import annotations

import json
import math

import pytest

from data_pipelines import prepare
from finedual_jax.data import benchmark
from finedual_jax.data import pipeline

_BATCH = 4
_MAX_LEN = 32
_TEXT_LEN = 32


@pytest.fixture(scope='module')
def dataset_dir(tmp_path_factory):
  raw_dir = tmp_path_factory.mktemp('synthetic') / 'interhuman'
  return prepare.prepare_synthetic(raw_dir, tmp_path_factory.mktemp('tfds'), clips_per_type=2)


@pytest.fixture(scope='module')
def result(dataset_dir):
  return benchmark.pipeline_throughput(
      dataset_dir, pipeline.load_artifacts(dataset_dir), batch_size=_BATCH, max_len=_MAX_LEN,
      max_text_len=_TEXT_LEN, worker_count=0, num_batches=3, warmup=1)


def test_pipeline_throughput_reports_positive_finite_figures(result):
  assert result['worker_count'] == 0
  assert (result['batch_size'], result['max_len'], result['max_text_len']) == (
      _BATCH, _MAX_LEN, _TEXT_LEN)
  assert (result['num_batches'], result['warmup_batches']) == (3, 1)
  for key in ('seconds', 'examples_per_s', 'batches_per_s', 'mean_valid_rows'):
    assert math.isfinite(result[key]) and result[key] > 0, key
  assert math.isfinite(result['main_process_cpu_ms_per_example'])
  assert result['main_process_cpu_ms_per_example'] >= 0
  assert 1 <= result['mean_valid_rows'] <= _MAX_LEN
  assert result['examples_per_s'] == pytest.approx(3 * _BATCH / result['seconds'])


def test_pipeline_throughput_rejects_no_batches(dataset_dir):
  with pytest.raises(ValueError, match='num_batches'):
    benchmark.pipeline_throughput(dataset_dir, pipeline.load_artifacts(dataset_dir),
                                  batch_size=_BATCH, max_len=_MAX_LEN, worker_count=0,
                                  num_batches=0, warmup=0)


def test_report_is_written_atomically_and_reads_back(result, dataset_dir, tmp_path):
  train = {'examples_per_s': result['examples_per_s'] / 40, 'median_step_s': 0.5,
           'global_batch': 16, 'max_len': 90, 'platform': 'cpu', 'num_devices': 1}
  report = {'machine': benchmark.machine_info(), 'dataset_dir': str(dataset_dir),
            'pipeline': [result], 'pipeline_at_config': result, 'train_step': train,
            'targets': benchmark.targets([result], train, result)}
  path = benchmark.write_json(tmp_path / 'new' / 'folder' / 'bench.json', report)
  loaded = json.loads(path.read_text())
  assert set(loaded) == {'machine', 'dataset_dir', 'pipeline', 'pipeline_at_config',
                         'train_step', 'targets'}
  assert {'cpu_count', 'platform', 'jax_version', 'grain_version', 'timestamp'} <= set(
      loaded['machine'])
  assert loaded['pipeline'][0]['examples_per_s'] == pytest.approx(result['examples_per_s'])
  targets = loaded['targets']
  assert targets['best_worker_count'] == 0
  assert targets['ratio'] == pytest.approx(40.0)
  assert targets['ratio_pass'] is True
  assert [p.name for p in path.parent.iterdir()] == ['bench.json']  # No temporary left behind.
  table = benchmark.format_table(loaded)
  assert 'workers=0' in table and ('PASS' in table or 'FAIL' in table)


def test_peak_rss_restarts_from_the_current_size_after_a_reset():
  import numpy as np
  if not benchmark.reset_peak_rss():
    pytest.skip('this OS cannot reset the peak resident set size')
  big = np.ones(400 * 2**20 // 8)  # 400 MiB, touched, then returned to the OS.
  del big
  with_big = benchmark.peak_rss_bytes()
  assert benchmark.reset_peak_rss()
  assert benchmark.peak_rss_bytes() < with_big - 300 * 2**20
