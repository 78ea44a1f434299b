"""Training at scale: config checks before compiling, exact resume after SIGKILL, SIGTERM saving the
current step, unreadable checkpoints, restoring on fewer devices, NaN policies, validation,
TensorBoard files, and two processes matching one.

Kept cheap for 2-core CI: the runs in this process share compiled steps through JAX's persistent
compilation cache (on for this module only; the subprocesses get it through the environment, so
they load what this process compiled), use one device unless the feature needs more, and every
subprocess has a timeout.
"""

import contextlib
import gc
import io
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import multihost_worker
from experiments import default
from finedual_jax import checkpointing
from finedual_jax import config_checks
from finedual_jax import parallel
from finedual_jax import train_state
from finedual_jax import trainer
from finedual_jax.data import pipeline
from finedual_jax.models import interaction_graph
from finedual_jax.models import precision

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8
CLI_ARGS = ['--config=experiments/default.py:size=tiny', '--config.parallel.num_devices=4',
            '--config.sample.text=', f'--config.train.num_steps={STEPS}',
            '--config.train.log_every=1', '--config.train.checkpoint_every=1']


# orbax's restore of a damaged checkpoint leaves a tensorstore callback for a closed event loop,
# reported when collected; the restore itself raised cleanly and was handled.
_DAMAGED = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


def _config(**train):
  """What CLI_ARGS give, with ``train`` fields changed.

  4 of the 8 fake devices: the two-process test's one-process reference then runs the same
  compiled step as every other run here (its fields that shape the step are these).
  """
  config = default.get_config('size=tiny')
  config.parallel.num_devices = 4
  config.sample.text = ''
  config.train.num_steps = STEPS
  config.train.log_every = 1
  config.train.checkpoint_every = 1
  for key, value in train.items():
    config.train[key] = value
  return config


@pytest.fixture(scope='module')
def built_data(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('build')
  trainer.prepare_data(_config(), workdir)
  return workdir / 'data'


def _workdir(path: pathlib.Path, built_data: pathlib.Path) -> pathlib.Path:
  shutil.copytree(built_data, path / 'data')
  return path


def _env(cache: pathlib.Path, **extra) -> dict:
  # The same XLA_FLAGS as this process (tests/conftest.py), so compiled steps are shared.
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='1', PYTHONUNBUFFERED='1', **extra)


def _train_cli(workdir, cache, *, signal_after: str | None = None, sig=signal.SIGTERM,
               timeout: float = 300) -> tuple[int, str]:
  """Runs the training command; sends ``sig`` once a stdout line matches ``signal_after``."""
  proc = subprocess.Popen([sys.executable, '-m', 'finedual_jax.train', *CLI_ARGS,
                           f'--workdir={workdir}'], cwd=REPO, env=_env(cache),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  watchdog = threading.Timer(timeout, proc.kill)
  watchdog.start()
  lines, sent = [], False
  try:
    for line in proc.stdout:
      lines.append(line)
      if signal_after and not sent and re.match(signal_after, line):
        proc.send_signal(sig)
        sent = True
    proc.wait()
  finally:
    watchdog.cancel()
    if proc.poll() is None:
      proc.kill()
  out = ''.join(lines)
  assert signal_after is None or sent, out[-3000:]
  return proc.returncode, out


def _state(workdir, step):
  """The train state saved at ``step``, on the host (its RNG key as raw data)."""
  state = trainer.load_trained(workdir, step)[2]
  return jax.device_get(state.replace(rng=jax.random.key_data(state.rng)))


def _leaves(state):
  return jax.tree_util.tree_leaves_with_path(state)


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


class _Poisoned:
  """A loader whose ``at``-th batch has a NaN in its motion (a stand-in for bad data)."""

  def __init__(self, loader, at):
    self.loader, self.at = loader, at

  def __iter__(self):
    return _PoisonedIterator(iter(self.loader), self.at)


class _PoisonedIterator:
  def __init__(self, iterator, at):
    self.iterator, self.at, self.count = iterator, at, 0

  def __next__(self):
    batch = next(self.iterator)
    self.count += 1
    if self.count == self.at:
      batch = dict(batch, motion=batch['motion'].copy())
      batch['motion'][0, 0, 0, 0] = np.nan
    return batch

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state):
    self.iterator.set_state(state)


def _poison(monkeypatch, at):
  make_loader = pipeline.make_loader
  monkeypatch.setattr(pipeline, 'make_loader',
                      lambda *args, **kwargs: _Poisoned(make_loader(*args, **kwargs), at))


# Config checks ------------------------------------------------------------------------------

def test_impossible_values_are_named_before_data_or_compilation(tmp_path):
  bad = {('optimizer', 'learning_rate'): -1e-3, ('train', 'batch_size'): 12,
         ('train', 'grad_accum_steps'): 2, ('parallel', 'backend'): 'pjit',
         ('train', 'log_every'): 0, ('data', 'max_len'): 1,
         ('diffusion', 'guidance_overall'): float('nan'), ('train', 'nan_policy'): 'ignore',
         ('model', 'compute_dtype'): 'float16', ('model', 'graph_message_passing'): 'sparse'}
  config = default.get_config('size=tiny')
  for (section, field), value in bad.items():
    config[section][field] = value
  with config.ignore_type():  # As an experiment file could write it.
    config.data.in_memory = 'yes'
  with pytest.raises(config_checks.ConfigError) as error:
    trainer.train_and_evaluate(config, tmp_path)
  message = str(error.value)
  assert "config.data.in_memory = 'yes': expected True or False" in message, message
  for section, field in bad:
    assert f'config.{section}.{field}' in message, message
  assert 'multiple of the devices (8) times config.train.grad_accum_steps (2)' in message
  assert not (tmp_path / 'data').exists()  # Failed before building anything.
  for fine in ('size=tiny', 'size=small'):
    config_checks.validate(default.get_config(fine), device_count=8)
  # The checks' copies of the modules' choices (config_checks imports no JAX).
  assert config_checks.GRAPH_MESSAGE_PASSING == interaction_graph.MESSAGE_PASSING
  assert config_checks.COMPUTE_DTYPES == tuple(precision.DTYPES)


def test_command_line_typos_and_bad_values_fail_with_a_clear_message(tmp_path):
  def run(*args):
    return subprocess.run([sys.executable, '-m', 'finedual_jax.train',
                           '--config=experiments/default.py:size=tiny', f'--workdir={tmp_path}',
                           *args], cwd=REPO, env=dict(os.environ), capture_output=True,
                          text=True, timeout=120)

  typo = run('--config.train.num_stepz=3')
  assert typo.returncode != 0
  assert ('unknown config field "num_stepz" in --config.train.num_stepz=3. Did you mean '
          '"num_steps"') in typo.stderr, typo.stderr[-2000:]
  assert 'Traceback' not in typo.stderr
  bad = run('--config.train.nan_policy=ignore', '--config.optimizer.learning_rate=-1')
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert "config.train.nan_policy = 'ignore'" in bad.stderr, bad.stderr[-2000:]
  assert 'config.optimizer.learning_rate = -1.0' in bad.stderr
  assert 'data:' not in bad.stdout and not (tmp_path / 'data').exists()


# Checkpoints --------------------------------------------------------------------------------

def _tiny_state(mesh):
  params = {'w': jnp.arange(12.0).reshape(3, 4), 'b': jnp.ones((4,))}
  tx = train_state.make_optimizer(learning_rate=1e-3, warmup_steps=1, total_steps=10,
                                  weight_decay=0.0, clip_norm=1.0)
  return parallel.replicate(train_state.create(params, tx, jax.random.key(7)), mesh)


def test_keeps_the_last_n_checkpoints_plus_every_kth(tmp_path):
  state = _tiny_state(parallel.make_mesh(1))
  checkpointer = checkpointing.Checkpointer(tmp_path, max_to_keep=2, keep_every=3, training=True)
  for step in range(1, 8):
    checkpointer.save(step, state, {'step': step}, run_info={'git_commit': 'abc'})
  checkpointer.wait()
  assert checkpointer.all_steps() == [3, 6, 7]
  assert checkpointer.restore_config(6) == {'step': 6}
  assert checkpointer.restore_run_info(7) == {'git_commit': 'abc'}
  checkpointer.close()


def _grain_loader(seed):
  sampler = grain.samplers.IndexSampler(num_records=10, shuffle=True, num_epochs=1, seed=seed)
  return grain.DataLoader(data_source=list(range(10)), sampler=sampler)


def test_a_pipeline_state_of_another_loader_is_refused_with_a_reason(tmp_path):
  state = _tiny_state(parallel.make_mesh(1))
  saved = iter(_grain_loader(seed=1))
  next(saved)
  checkpointer = checkpointing.Checkpointer(tmp_path, training=True)
  checkpointer.save(1, state, {}, saved.get_state())
  checkpointer.wait()
  same = iter(_grain_loader(seed=1))
  assert checkpointer.restore_data(same, 1) == ''
  assert list(same) == list(saved)
  other = iter(_grain_loader(seed=2))  # Another sampler: grain refuses the state.
  problem = checkpointer.restore_data(other, 1)
  assert 'checkpoint 1 holds the input-pipeline state of another loader' in problem
  assert 'Sampler in checkpoint does not match' in problem
  assert list(other) == list(_grain_loader(seed=2))  # Left as it was.
  checkpointer.close()


@_DAMAGED
def test_unreadable_and_unfinished_checkpoints_fall_back_to_the_previous_one(tmp_path):
  mesh = parallel.make_mesh(1)
  state = _tiny_state(mesh)
  checkpointer = checkpointing.Checkpointer(tmp_path, max_to_keep=5, training=True)
  for step in (1, 2, 3):
    checkpointer.save(step, state.replace(step=jnp.int32(step)), {'step': step})
  checkpointer.wait()
  checkpointer.close()
  for p in (tmp_path / 'checkpoints' / '3' / 'state').rglob('*'):
    if p.is_file() and '/d/' in str(p):  # The data files, truncated as by a full disk.
      p.write_bytes(p.read_bytes()[:16])
  unfinished = tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp-1234567'
  shutil.copytree(tmp_path / 'checkpoints' / '2', unfinished)

  warnings = []
  checkpointer = checkpointing.Checkpointer(tmp_path, max_to_keep=5, training=True)
  restored, step = checkpointer.restore_latest_good(checkpointing.abstract_like(state),
                                                    warn=warnings.append)
  text = '\n'.join(warnings)
  assert step == 2 and int(restored.step) == 2, text
  assert 'checkpoint 4 never finished' in text
  assert 'checkpoint 3 cannot be restored' in text and 'trying the previous one' in text
  assert (tmp_path / checkpointing.UNREADABLE_DIR / '3').is_dir()
  assert not unfinished.exists() and checkpointer.all_steps() == [1, 2]
  checkpointer.save(3, restored, {'step': 3})  # The step can be written again.
  checkpointer.wait()
  assert checkpointer.all_steps() == [1, 2, 3]
  checkpointer.close()

  # Nothing readable: the newest error, not a silent fresh start.
  shutil.rmtree(tmp_path / 'checkpoints')
  checkpointer = checkpointing.Checkpointer(tmp_path, training=True)
  checkpointer.save(1, state, {})
  checkpointer.wait()
  for p in (tmp_path / 'checkpoints' / '1' / 'state').rglob('*'):
    if p.is_file() and '/d/' in str(p):
      p.unlink()
  with pytest.raises(Exception, match='.'):
    checkpointer.restore_latest_good(checkpointing.abstract_like(state), warn=warnings.append)
  checkpointer.close()
  gc.collect()  # Here, under _DAMAGED, rather than in a later test.


def test_a_checkpoint_from_eight_devices_restores_on_one_and_in_pmap_form(tmp_path):
  eight = parallel.make_mesh(8)
  state = _tiny_state(eight)
  state = state.replace(params=jax.tree.map(lambda x: x + 1, state.params))
  checkpointer = checkpointing.Checkpointer(tmp_path, training=True)
  checkpointer.save(5, state, {}, run_info=checkpointing.run_info())
  checkpointer.wait()
  one = parallel.make_mesh(1)
  restored, step = checkpointer.restore_latest_good(checkpointing.abstract_like(_tiny_state(one)))
  assert step == 5
  assert restored.params['w'].sharding.mesh.devices.size == 1
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)),
                  jax.tree.leaves(jax.device_get(restored.params))):
    np.testing.assert_array_equal(a, b)
  dp = parallel.DataParallel(parallel.make_mesh(2), 'pmap')  # Leading device axis, and back.
  back = dp.get(dp.put(restored))
  np.testing.assert_array_equal(back.params['w'], jax.device_get(state.params['w']))
  assert back.params['w'].shape == (3, 4)
  info = checkpointer.restore_run_info(5)
  assert info['device_count'] == 8 and re.fullmatch(r'[0-9a-f]{40}|unknown', info['git_commit'])
  checkpointer.close()


# Kill, stop, resume -------------------------------------------------------------------------

@pytest.fixture(scope='module')
def reference(compile_cache, built_data, tmp_path_factory):
  """An uninterrupted run of STEPS steps (compiles the step this module's runs share)."""
  workdir = _workdir(tmp_path_factory.mktemp('reference'), built_data)
  summary = trainer.train_and_evaluate(_config(checkpoint_every=STEPS), workdir)
  assert summary['step'] == STEPS and not summary['preempted']
  return workdir


@pytest.fixture(scope='module')
def interrupted(compile_cache, built_data, reference, tmp_path_factory):
  """The same run killed with SIGKILL, restarted and stopped with SIGTERM, its newest
  checkpoint then damaged (data files deleted), and resumed to the end in this process.
  Returns what each stage printed."""
  workdir = _workdir(tmp_path_factory.mktemp('interrupted'), built_data)
  killed_rc, killed_out = _train_cli(workdir, compile_cache, signal_after=r'step 3/\d+ \|',
                                     sig=signal.SIGKILL)
  stopped_rc, stopped_out = _train_cli(workdir, compile_cache, signal_after=r'step 6/\d+ \|')
  match = re.search(r'SIGTERM: stopped after step (\d+); checkpoint saved at step \1',
                    stopped_out)
  assert match, stopped_out[-3000:]
  stop_step = int(match.group(1))
  checkpoint_steps = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                            if p.name.isdigit())
  # Corrupt the newest checkpoint: the resume must warn and use the one before it.
  newest = workdir / 'checkpoints' / str(stop_step) / 'state'
  files = [p for p in newest.rglob('*') if p.is_file() and '/d/' in str(p)]
  for p in files:
    p.unlink()
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    summary = trainer.train_and_evaluate(_config(checkpoint_every=STEPS), workdir)
  gc.collect()  # See _DAMAGED.
  return dict(workdir=workdir, killed=(killed_rc, killed_out),
              stopped=(stopped_rc, stopped_out, stop_step, checkpoint_steps),
              resumed=(out.getvalue(), summary))


@_DAMAGED
def test_sigterm_saves_a_checkpoint_at_the_current_step_and_exits_0(interrupted):
  rc, out, stop_step, steps = interrupted['stopped']
  assert rc == 0, out[-3000:]
  assert 6 <= stop_step < STEPS and max(steps) == stop_step, (stop_step, steps)
  assert f'stopped by SIGTERM at step {stop_step} with a checkpoint' in out
  assert 'resumed from' in out  # It had resumed after the SIGKILL.
  assert f'step {stop_step + 1}/' not in out


@_DAMAGED
def test_sigkill_then_restart_ends_with_bit_identical_parameters(interrupted, reference):
  killed_rc, killed_out = interrupted['killed']
  assert killed_rc == -signal.SIGKILL and 'done:' not in killed_out
  out, summary = interrupted['resumed']
  stop_step = interrupted['stopped'][2]
  assert summary['step'] == STEPS
  # The damaged newest checkpoint was reported and the previous one used.
  assert f'checkpoint {stop_step} cannot be restored' in out, out
  assert f'resumed from {interrupted["workdir"] / "checkpoints"} at step {stop_step - 1}' in out
  expected, actual = _state(reference, STEPS), _state(interrupted['workdir'], STEPS)
  for (path, a), (_, b) in zip(_leaves(expected), _leaves(actual)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
  # Each step logged once, with the uninterrupted run's values.
  assert _metrics(interrupted['workdir']) == _metrics(reference)


# NaN policies, validation, TensorBoard ------------------------------------------------------

def test_nan_policy_stop_saves_a_diagnostic_and_names_the_step(compile_cache, built_data, reference,
                                                               tmp_path, monkeypatch):
  workdir = _workdir(tmp_path, built_data)
  _poison(monkeypatch, at=3)
  with pytest.raises(FloatingPointError, match=r'step 3: non-finite loss terms: .*total=nan'):
    trainer.train_and_evaluate(_config(nan_policy='stop', checkpoint_every=2), workdir)
  diagnostic = workdir / checkpointing.DIAGNOSTICS_DIR / 'step_3'
  assert {p.name for p in diagnostic.iterdir()} >= {'state', 'batch', 'info'}
  # The diagnostic is no checkpoint: resuming starts after step 2, the last good one.
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                if p.name.isdigit())[-1] == 2
  assert not any(np.isnan(leaf).any() for _, leaf in _leaves(_state(workdir, 2)))


def _tensorboard_scalars(directory: pathlib.Path) -> dict[str, dict[int, float]]:
  """Reads event files by their TFRecord framing (length, masked CRC32C, Event protobuf)."""
  from tensorboardX.crc32c import crc32c
  from tensorboardX.proto import event_pb2

  def masked(data):
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

  scalars: dict[str, dict[int, float]] = {}
  files = sorted(directory.glob('events.out.tfevents.*'))
  assert files, list(directory.iterdir())
  for path in files:
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      header = data[pos:pos + 8]
      (length,) = struct.unpack('<Q', header)
      assert struct.unpack('<I', data[pos + 8:pos + 12])[0] == masked(header)
      body = data[pos + 12:pos + 12 + length]
      assert struct.unpack('<I', data[pos + 12 + length:pos + 16 + length])[0] == masked(body)
      pos += 16 + length
      event = event_pb2.Event()
      event.ParseFromString(body)
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def test_nan_policy_skip_validation_samples_and_tensorboard(compile_cache, built_data, reference,
                                                            tmp_path, monkeypatch, capsys):
  pytest.importorskip('tensorboardX', reason='TensorBoard files need tensorboardX')
  workdir = _workdir(tmp_path, built_data)
  _poison(monkeypatch, at=3)
  config = _config(nan_policy='skip', checkpoint_every=STEPS, eval_every=4, sample_every=STEPS,
                   sample_prompts=2)
  config.sample.length = 8
  summary = trainer.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert summary['step'] == STEPS
  assert re.search(r'warning: step 3: non-finite loss terms: .*total=nan.*; update skipped '
                   r'\(1 so far', out), out
  assert 'eval step 4 | val loss' in out and f'eval step {STEPS} | val loss' in out
  records = _metrics(workdir)
  train = {r['step']: r for r in records if 'total' in r}
  evals = {r['step']: r for r in records if 'eval/total' in r}
  assert sorted(train) == list(range(1, STEPS + 1)) and sorted(evals) == [4, STEPS]
  assert [train[s]['skipped_steps'] for s in train] == [0, 0] + [1] * (STEPS - 2)
  assert train[3]['update_skipped'] == 1 and np.isfinite(train[4]['total'])
  assert all(np.isfinite(v) for v in evals[STEPS].values())
  assert int(_state(workdir, STEPS).skipped_steps) == 1
  samples = workdir / 'samples' / f'val_step_{STEPS}'
  assert len(list(samples.glob('*.gif'))) == 2 and (samples / 'samples.json').is_file()

  scalars = _tensorboard_scalars(workdir / 'tensorboard')
  assert {'train/total', 'train/grad_norm', 'train/steps_per_s', 'train/examples_per_s',
          'eval/total'} <= set(scalars)
  for step in (1, 2, STEPS):
    np.testing.assert_allclose(scalars['train/total'][step], train[step]['total'], rtol=1e-6)
  np.testing.assert_allclose(scalars['eval/total'][STEPS], evals[STEPS]['eval/total'], rtol=1e-6)


# Two processes ------------------------------------------------------------------------------

class _TwoShards:
  """One process reading what two processes would: shards 0 and 1, side by side."""

  def __init__(self, loaders):
    self.loaders = loaders

  def __iter__(self):
    return _TwoShardIterator([iter(loader) for loader in self.loaders])


class _TwoShardIterator:
  def __init__(self, iterators):
    self.iterators = iterators

  def __next__(self):
    halves = [next(it) for it in self.iterators]
    return {k: np.concatenate([h[k] for h in halves]) for k in halves[0]}

  def get_state(self):
    return json.dumps([it.get_state().decode() for it in self.iterators]).encode()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process_with_four_devices(compile_cache, built_data, reference,
                                                           tmp_path, monkeypatch):
  steps = STEPS
  multi = _workdir(tmp_path / 'two_processes', built_data)
  address = f'127.0.0.1:{_free_port()}'
  procs = [subprocess.Popen(
      [sys.executable, str(REPO / 'tests' / 'multihost_worker.py'),
       f'--coordinator_address={address}', '--num_processes=2', f'--process_id={i}',
       f'--workdir={multi}', f'--num_steps={steps}'],
      cwd=REPO, env=_env(compile_cache, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    # Meanwhile, the reference: 4 devices of this process, reading both processes' shards.
    make_loader = pipeline.make_loader

    def two_shards(*args, batch_size, shard_index, shard_count, **kwargs):
      assert (shard_index, shard_count) == (0, 1)
      return _TwoShards([make_loader(*args, batch_size=batch_size // 2, shard_index=i,
                                     shard_count=2, **kwargs) for i in range(2)])

    monkeypatch.setattr(pipeline, 'make_loader', two_shards)
    config = _config(checkpoint_every=steps)
    assert {k: v for k, v in config.to_dict().items() if k != 'parallel'} == {
        k: v for k, v in multihost_worker.tiny_config(steps).to_dict().items() if k != 'parallel'}
    single = _workdir(tmp_path / 'one_process', built_data)
    trainer.train_and_evaluate(config, single)
    outs = [p.communicate(timeout=400)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    if "aren't implemented on the CPU backend" in out:
      pytest.skip('this jaxlib has no CPU collectives across processes')
    assert p.returncode == 0, out[-4000:]
  assert f'step {steps}/{steps}' in outs[0] and 'step 1/' not in outs[1]  # Process 0 logs.
  data = multi / 'checkpoints' / str(steps) / 'data'
  assert {p.name for p in data.glob('*.json')} == {'process_0-of-2.json', 'process_1-of-2.json'}
  np.testing.assert_allclose([r['total'] for r in _metrics(multi)],
                             [r['total'] for r in _metrics(single)], rtol=1e-5)
  expected, actual = _state(single, steps), _state(multi, steps)
  assert int(actual.step) == steps
  compared = 0
  for (path, a), (_, b) in zip(_leaves(expected), _leaves(actual)):
    name = jax.tree_util.keystr(path)
    if "['key']['bias']" in name:
      continue  # Zero-gradient leaves that Adam moves by round-off: see tests/test_parallel.py.
    np.testing.assert_allclose(b, a, atol=1e-5, err_msg=name)
    compared += 1
  assert compared > 100
