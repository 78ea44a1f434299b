"""The quick-start path at a tiny size: build data, train on 8 devices, checkpoint, restore,
resume, sample and render, through the library and through the command lines."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import default
from finedual_jax import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def run(trained_run):
  return trained_run


def test_training_writes_checkpoints_metrics_and_a_rendered_sample(run):
  config, workdir, summary = run
  assert jax.device_count() == 8  # The tiny run used the 8 fake devices (parallel.num_devices=0).
  assert summary['step'] == config.train.num_steps
  assert np.isfinite(summary['metrics']['total'])
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps[-1] == config.train.num_steps
  logged = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in logged] == list(
      range(config.train.log_every, config.train.num_steps + 1, config.train.log_every))
  assert {'total', 'simple', 'velocity', 'grad_norm'} <= set(logged[-1])
  record = summary['samples'][0]
  positions = np.load(record['positions'])
  assert positions.shape == (2, config.sample.length, 22, 3) and np.all(np.isfinite(positions))
  assert np.load(record['features']).shape == (2, config.sample.length, 262)
  with Image.open(record['gif']) as gif:
    assert gif.n_frames == config.sample.length
  assert Image.open(record['png']).size[0] > 0
  index = json.loads((pathlib.Path(record['gif']).parent / 'samples.json').read_text())
  assert index['samples'][0]['text'] == config.sample.text


def test_restored_checkpoint_equals_the_trained_state_and_samples_deterministically(run):
  config, workdir, summary = run
  config2, model, state, artifacts, schedule = trainer.load_trained(workdir)
  assert config2.to_dict() == config.to_dict()
  assert int(state.step) == config.train.num_steps
  from finedual_jax import generation
  sample_fn = generation.make_sampler(model, schedule, w_overall=2.0, w_individual=1.0,
                                      ddim_steps=4)
  prompt = generation.Prompt.from_text('Two people bow to each other.')
  kwargs = dict(length=20, max_len=config.data.max_len, max_text_len=config.data.max_text_len)
  a = generation.generate(sample_fn, state.ema_params, artifacts, [prompt], seed=3, **kwargs)
  b = generation.generate(sample_fn, state.ema_params, artifacts, [prompt], seed=3, **kwargs)
  c = generation.generate(sample_fn, state.ema_params, artifacts, [prompt], seed=4, **kwargs)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  with pytest.raises(ValueError, match='length'):
    generation.generate(sample_fn, state.ema_params, artifacts, [prompt], seed=0,
                        length=config.data.max_len + 1, max_len=config.data.max_len,
                        max_text_len=config.data.max_text_len)


def _resume_from_step_3(run, tmp_path, monkeypatch, *, drop_data_state: bool):
  """A run 'killed' right after checkpoint 3: a workdir holding only that checkpoint, resumed.
  The restored state replaces the initial one, so the initialisers must not even run."""
  config, workdir, _ = run

  def no_initial_state(*args, **kwargs):
    raise AssertionError('a resumed run computed an initial state')

  monkeypatch.setattr(trainer, 'initial_state', no_initial_state)
  resumed_dir = tmp_path / 'resumed'
  shutil.copytree(workdir / 'data', resumed_dir / 'data')
  shutil.copytree(workdir / 'checkpoints' / '3', resumed_dir / 'checkpoints' / '3')
  if drop_data_state:
    shutil.rmtree(resumed_dir / 'checkpoints' / '3' / 'data')
  config = default.get_config('size=tiny')
  config.sample.text = ''
  trainer.train_and_evaluate(config, resumed_dir)
  return resumed_dir


def _params_at(workdir, step):
  return jax.tree.leaves(jax.device_get(trainer.load_trained(workdir, step)[2].params))


# Both resumed runs compile the same steps: the second loads them from the compile_cache.
def test_resumed_run_reads_the_same_batches_and_ends_with_identical_parameters(
    run, tmp_path, monkeypatch, capsys, compile_cache):
  config, workdir, _ = run
  resumed_dir = _resume_from_step_3(run, tmp_path, monkeypatch, drop_data_state=False)
  out = capsys.readouterr().out
  assert f'resumed from {resumed_dir / "checkpoints"} at step 3' in out, out
  for a, b in zip(_params_at(workdir, 6), _params_at(resumed_dir, 6)):
    np.testing.assert_array_equal(a, b)
  logged = {r['step']: r for r in map(json.loads, (workdir / 'metrics.jsonl').read_text()
                                      .splitlines())}
  resumed = [json.loads(line) for line in (resumed_dir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in resumed] == [4, 6]
  for record in resumed:
    assert record == logged[record['step']]


def test_resume_without_a_saved_pipeline_state_warns_and_reseeds(run, tmp_path, monkeypatch,
                                                                capsys, compile_cache):
  config, workdir, _ = run
  resumed_dir = _resume_from_step_3(run, tmp_path, monkeypatch, drop_data_state=True)
  out = capsys.readouterr().out
  assert 'warning: checkpoint 3 has no input-pipeline state' in out
  assert f'restarts with seed {config.seed + 3}' in out
  # Different batches, so (almost surely) different parameters.
  assert any(not np.array_equal(a, b)
             for a, b in zip(_params_at(workdir, 6), _params_at(resumed_dir, 6)))


def _cli(module, *args, env_extra=None):
  env = dict(os.environ, XLA_FLAGS='', **(env_extra or {}))
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_train_cli_runs_the_tiny_config(tmp_path):
  result = _cli('finedual_jax.train', '--config=experiments/default.py:size=tiny',
                f'--workdir={tmp_path}', '--config.train.num_steps=2',
                '--config.train.log_every=1', '--config.sample.length=8')
  assert result.returncode == 0, result.stderr[-3000:]
  for needle in ('data:', 'checkpoints:', 'sample gif:', 'steps/s', 'ETA'):
    assert needle in result.stdout, result.stdout
  bad = _cli('finedual_jax.train', '--config=experiments/default.py:size=huge',
             f'--workdir={tmp_path / "bad"}')
  assert bad.returncode != 0 and 'size' in bad.stderr
