"""pipeline.read_ahead: batches built on a low-priority thread, the same batches and states."""

from __future__ import annotations

import itertools
import os
import sys
import threading

import grain
import numpy as np
import pytest

from experiments import default
from finedual_jax import config_checks
from finedual_jax.data import batch as batch_lib
from finedual_jax.data import pipeline

_LINUX = sys.platform.startswith('linux')


def _iterator(dataset_dir, artifacts, seed=3):
  return iter(pipeline.make_loader(dataset_dir, 'train', artifacts, batch_size=4, max_len=40,
                                   max_text_len=24, train=True, seed=seed, in_memory=True))


def _assert_same_batches(batches, expected):
  assert len(batches) == len(expected)
  for a, b in zip(batches, expected):
    for key in batch_lib.spec(1, 1, 1):
      np.testing.assert_array_equal(a[key], b[key])


class _Counting:
  """A checkpointable iterator of 0, 1, ... that raises ``error`` instead of item ``fail_at``
  and records the scheduling policy and niceness of the thread reading it."""

  def __init__(self, stop=None, fail_at=None, error=None):
    self.position, self.stop, self.fail_at, self.error = 0, stop, fail_at, error
    self.seen_by: list[tuple[int, int, int]] = []

  def __next__(self):
    thread = threading.get_native_id()
    if _LINUX:
      self.seen_by.append((thread, os.sched_getscheduler(0),
                           os.getpriority(os.PRIO_PROCESS, thread)))
    if self.position == self.fail_at:
      raise self.error
    if self.position == self.stop:
      raise StopIteration
    self.position += 1
    return self.position - 1

  def get_state(self):
    return {'position': self.position}

  def set_state(self, state):
    self.position = state['position']


def test_the_same_batches_and_states_as_reading_in_the_loop(dataset_dir, artifacts):
  plain = _iterator(dataset_dir, artifacts)
  expected, states = [], []
  for _ in range(6):
    expected.append(next(plain))
    states.append(plain.get_state())
  ahead = pipeline.read_ahead(_iterator(dataset_dir, artifacts), 2)
  try:
    for batch, batch_expected, state in zip(ahead, expected, states):
      _assert_same_batches([batch], [batch_expected])
      assert ahead.get_state() == state  # After this batch, not after what was read ahead.
  finally:
    ahead.close()


def test_set_state_drops_what_was_read_ahead_and_resumes_exactly(dataset_dir, artifacts):
  plain = _iterator(dataset_dir, artifacts)
  first = list(itertools.islice(plain, 2))
  state = plain.get_state()
  expected = list(itertools.islice(plain, 3))
  ahead = pipeline.read_ahead(_iterator(dataset_dir, artifacts), 3)
  try:
    _assert_same_batches(list(itertools.islice(ahead, 4)), first + expected[:2])
    ahead.set_state(state)  # Its thread had read past this point.
    assert ahead.get_state() == state
    _assert_same_batches(list(itertools.islice(ahead, 3)), expected)
  finally:
    ahead.close()
  # A fresh read-ahead iterator restored before its first batch, as the trainer resumes.
  resumed = pipeline.read_ahead(_iterator(dataset_dir, artifacts), 2)
  resumed.set_state(state)
  _assert_same_batches(list(itertools.islice(resumed, 3)), expected)
  resumed.close()


def test_errors_and_the_end_arrive_where_the_loop_would_meet_them():
  ahead = pipeline.read_ahead(_Counting(fail_at=3, error=ValueError('record 3 is broken')), 2)
  assert [next(ahead) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(ValueError, match='record 3 is broken'):
    next(ahead)
  assert ahead.get_state() == {'position': 3}
  assert list(pipeline.read_ahead(_Counting(stop=5), 2)) == [0, 1, 2, 3, 4]


@pytest.mark.skipif(not _LINUX, reason='thread priorities are set on Linux only')
@pytest.mark.parametrize('priority', ['idle', 'low', 'normal'])
def test_the_reading_thread_alone_runs_at_the_asked_priority(priority):
  main = threading.get_native_id()
  policy, nice = os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, main)
  source = _Counting()
  ahead = pipeline.read_ahead(source, 1, priority=priority)
  next(ahead)
  ahead.close()
  readers = {(p, n) for thread, p, n in source.seen_by if thread != main}
  assert readers == {{'idle': (os.SCHED_IDLE, nice), 'low': (policy, 19),
                      'normal': (policy, nice)}[priority]}
  assert ahead.lowered == (priority != 'normal')
  # The main thread is untouched.
  assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, main)) == (policy, nice)


def test_close_stops_the_thread_and_zero_reads_in_the_loop():
  before = threading.active_count()
  ahead = pipeline.read_ahead(_Counting(), 2)
  next(ahead)
  assert threading.active_count() == before + 1
  ahead.close()
  assert threading.active_count() == before
  plain = _Counting()
  assert pipeline.read_ahead(plain, 0) is plain
  pipeline.stop_reading_ahead(plain)  # Nothing to stop.
  ahead = pipeline.read_ahead(_Counting(), 2)
  next(ahead)
  assert threading.active_count() == before + 1
  pipeline.stop_reading_ahead(ahead)
  assert threading.active_count() == before


@pytest.mark.parametrize('batches, priority, message', [
    (-1, 'idle', 'batches must be >= 0'), (2, 'fast', "priority must be one of.*'fast'")])
def test_bad_arguments_are_named(batches, priority, message):
  with pytest.raises(ValueError, match=message):
    pipeline.read_ahead(_Counting(), batches, priority=priority)


def test_config_checks_name_bad_read_ahead_fields():
  config = default.get_config()
  config.data.read_ahead = -2
  config.data.read_ahead_priority = 'high'
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.validate(config)
  assert 'config.data.read_ahead = -2: expected an integer >= 0' in str(error.value)
  assert "config.data.read_ahead_priority = 'high': expected one of ['idle', 'low', 'normal']" \
      in str(error.value)


def test_grain_checkpoint_handler_saves_and_restores_it(dataset_dir, artifacts, tmp_path):
  # The trainer's checkpoints go through grain's orbax handler, which calls start_prefetch
  # after set_state.
  ahead = pipeline.read_ahead(_iterator(dataset_dir, artifacts), 2)
  list(itertools.islice(ahead, 2))
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(tmp_path, args=grain.checkpoint.CheckpointSave(ahead))
  expected = list(itertools.islice(ahead, 3))
  ahead.close()
  resumed = pipeline.read_ahead(_iterator(dataset_dir, artifacts), 2)
  handler.restore(tmp_path, args=grain.checkpoint.CheckpointRestore(resumed))
  _assert_same_batches(list(itertools.islice(resumed, 3)), expected)
  resumed.close()
