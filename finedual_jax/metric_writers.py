"""Where training metrics go: ``WORKDIR/metrics.jsonl`` and TensorBoard event files.

Event files are written with tensorboardX (no TensorFlow) under ``WORKDIR/tensorboard``; view
them with ``tensorboard --logdir WORKDIR``. Only process 0 writes. A resumed run first drops
what the interrupted one logged after the checkpoint it resumes from (those steps run again),
from the JSONL file and, through TensorBoard's purge step, from the plots; a run starting from
scratch in a used workdir drops everything.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Mapping

JSONL_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


class MetricWriter:
  """Appends ``{'step': N, name: value, ...}`` lines to the JSONL file and the same scalars,
  tagged ``<group>/<name>``, to TensorBoard."""

  def __init__(self, workdir: str | pathlib.Path, *, resume_step: int = 0, enabled: bool = True):
    self.path = pathlib.Path(workdir) / JSONL_FILE
    self.enabled = enabled
    self._tensorboard = None
    if not enabled:
      return
    if self.path.is_file():  # A fresh start (resume_step 0) in a used workdir drops it all.
      self._drop_after(resume_step)
    try:
      from tensorboardX import SummaryWriter
    except ImportError:
      logging.warning('tensorboardX is not installed (pip install tensorboardX): no TensorBoard '
                      'event files; metrics still go to %s', self.path)
      return
    self._tensorboard = SummaryWriter(
        logdir=str(pathlib.Path(workdir) / TENSORBOARD_DIR), flush_secs=30,
        purge_step=resume_step + 1)

  def _drop_after(self, step: int) -> None:
    kept = [line for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get('step', 0) <= step]
    tmp = self.path.with_name(self.path.name + '.tmp')
    tmp.write_text(''.join(line + '\n' for line in kept))
    tmp.replace(self.path)

  def write(self, step: int, metrics: Mapping[str, float], *, group: str = 'train',
            jsonl_prefix: str = '', tensorboard_only: Mapping[str, float] | None = None) -> None:
    """Logs ``metrics`` at ``step``: to the JSONL file with names prefixed by ``jsonl_prefix``
    and to TensorBoard as ``group/name``; ``tensorboard_only`` (timings, which differ between
    runs) goes to TensorBoard alone."""
    if not self.enabled:
      return
    with self.path.open('a') as f:
      f.write(json.dumps({'step': step, **{jsonl_prefix + k: v for k, v in metrics.items()}})
              + '\n')
    if self._tensorboard is not None:
      for name, value in {**metrics, **(tensorboard_only or {})}.items():
        self._tensorboard.add_scalar(f'{group}/{name}', value, step)

  def flush(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None
