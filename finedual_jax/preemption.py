"""Stopping cleanly on SIGTERM (preemption) or SIGINT (Ctrl-C): finish the step, save, exit 0.

The signal handler only records the signal; the training loop asks ``should_stop(step)``
after each step. With several processes, every process must stop at the same step (saves are
collective), so SIGTERM goes through JAX's preemption sync service, which
``jax.distributed.initialize`` starts: a notice reaching any process makes all of them stop at
the same step. There a second Ctrl-C is the way out; one alone is not agreed between processes.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class StopRequest:
  """A context manager that turns SIGTERM/SIGINT into a request to stop after a step."""

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, object] = {}
    self._multiprocess = jax.process_count() > 1

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is not threading.main_thread():
      return self  # Python delivers signals to the main thread only; nothing to install.
    # With several processes SIGTERM is left to JAX's preemption notifier (see the docstring).
    signals = (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C: stop now, without a checkpoint.
    self.signal_name = signal.Signals(signum).name

  def should_stop(self, step: int) -> bool:
    """True when the loop should save at ``step`` and stop; call after every step."""
    if self._multiprocess:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or 'SIGTERM'
        return True
      return False
    return self.signal_name is not None
