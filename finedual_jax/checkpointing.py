"""Checkpoints of the whole train state with orbax; the only module that imports orbax.

A checkpoint holds the train state, the config (JSON), provenance (the code's git commit, the
JAX version, the device and process counts) and each process's input-pipeline state. Saves are
asynchronous and collective (every process calls ``save``). Resuming takes the newest checkpoint
that restores: an unreadable one (a file missing or truncated) is reported, set aside under
``workdir/checkpoints_unreadable/`` and the previous one is used; saves that never finished
(orbax's ``*.orbax-checkpoint-tmp-*`` folders, e.g. after SIGKILL) are reported and removed.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
import shutil
from typing import Any, Callable

import grain
import jax
import orbax.checkpoint as ocp

UNREADABLE_DIR = 'checkpoints_unreadable'
DIAGNOSTICS_DIR = 'diagnostics'
_TMP_PATTERN = re.compile(r'^(\d+)\.orbax-checkpoint-tmp-.*')


class _IteratorSnapshot:
  """A grain iterator state taken earlier, saved by grain's orbax handler like an iterator."""

  def __init__(self, state: bytes):
    self._state = state

  def get_state(self) -> bytes:
    return self._state


class Checkpointer:
  """Saves and restores ``{'state': TrainState, 'config': dict, 'run_info': dict, 'data':
  iterator state}`` under ``workdir/checkpoints``.

  Keeps the ``max_to_keep`` newest checkpoints plus every one whose step is a multiple of
  ``keep_every`` (0: none). The input pipeline's state is saved per process by grain's handler,
  so a resumed run reads exactly the batches it would have read.
  """

  def __init__(self, workdir: str | pathlib.Path, *, max_to_keep: int = 3, keep_every: int = 0,
               training: bool = False):
    """``training``: this process writes the run, so unfinished saves left by an earlier,
    killed process are its to remove (a reader, such as sampling, never removes anything)."""
    self.workdir = pathlib.Path(workdir).absolute()
    self.directory = self.workdir / 'checkpoints'
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, keep_period=keep_every or None, create=training,
        enable_async_checkpointing=True, cleanup_tmp_directories=training)
    self.unfinished = self._unfinished_saves() if training else []  # Before orbax removes them.
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)

  def _unfinished_saves(self) -> list[int]:
    if not self.directory.is_dir():
      return []
    return sorted(int(m.group(1)) for p in self.directory.iterdir()
                  if (m := _TMP_PATTERN.match(p.name)))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, config: dict, data_state: bytes | None = None,
           run_info: dict | None = None) -> None:
    """Starts saving ``state``, ``config`` and ``run_info``, and the iterator state
    ``data_state`` if given; returns before the write ends (``wait`` waits for it).

    ``data_state`` is ``iterator.get_state()`` taken right after the step's batch was read,
    so batches read ahead (prefetching) are not counted as consumed.
    """
    items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
    if run_info is not None:
      items['run_info'] = ocp.args.JsonSave(run_info)
    if data_state is not None:
      items['data'] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_state))
    self._manager.save(step, args=ocp.args.Composite(**items))

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores onto ``abstract_state`` (a tree of ShapeDtypeStructs with shardings: the
    current mesh's, so a checkpoint written on another number of devices restores too)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}.')
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore()))
    return restored['state'], restored['config']

  def restore_latest_good(self, abstract_state: Any,
                          warn: Callable[[str], None] = logging.warning
                          ) -> tuple[Any, int] | tuple[None, None]:
    """The newest checkpoint that restores, as (state, step); (None, None) when there is none.

    Unreadable newer checkpoints are reported through ``warn`` and moved to
    ``workdir/checkpoints_unreadable/`` (so their steps can be saved again). If no checkpoint
    restores, the newest one's error is raised: a config that no longer matches the saved
    state (a changed model size) must not silently start a fresh run.
    """
    for step in self.unfinished:
      warn(f'warning: the save of checkpoint {step} never finished (the run was killed while '
           'writing it); it was removed')
    steps = self.all_steps()
    first_error = None
    for i, step in enumerate(reversed(steps)):
      try:
        state, _ = self.restore(abstract_state, step)
      except Exception as e:  # orbax/tensorstore raise many types for unreadable files.
        first_error = first_error or e
        message = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        warn(f'warning: checkpoint {step} cannot be restored ({type(e).__name__}: {message})' +
             ('; trying the previous one' if i + 1 < len(steps) else ''))
        continue
      bad = [s for s in steps if s > step]
      if bad:
        self._set_aside(bad)
        warn(f'warning: resuming from checkpoint {step}; unreadable checkpoint(s) '
             f'{", ".join(map(str, bad))} moved to {self.workdir / UNREADABLE_DIR}')
      return state, step
    if first_error is not None:
      raise first_error
    return None, None

  def _set_aside(self, steps: list[int]) -> None:
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      target = self.workdir / UNREADABLE_DIR
      target.mkdir(exist_ok=True)
      for step in steps:
        destination = target / str(step)
        suffix = 1
        while destination.exists():
          destination, suffix = target / f'{step}_{suffix}', suffix + 1
        shutil.move(str(self.directory / str(step)), str(destination))
    ocp.multihost.sync_global_processes('finedual_set_aside_checkpoints')
    self._manager.close()
    self._manager = ocp.CheckpointManager(self.directory, options=self._options)

  def restore_data(self, iterator: Any, step: int | None = None) -> str:
    """Sets ``iterator`` to the input-pipeline state saved at ``step``.

    Returns '' on success, else why it could not (no data state in that checkpoint, or one
    saved by a different number of processes or for a loader grain does not match to this
    one); the iterator is then left as it was.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}.')
    folder = self.directory / str(step) / 'data'
    count = jax.process_count()
    if not folder.is_dir():
      return f'checkpoint {step} has no input-pipeline state'
    if not (folder / f'process_{jax.process_index()}-of-{count}.json').is_file():
      return (f'checkpoint {step} holds the input-pipeline state of another process count '
              f'({", ".join(sorted(p.name for p in folder.glob("*.json")))}; now {count})')
    try:
      self._manager.restore(step, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(iterator)))
    except ValueError as e:  # grain checks the state against the loader before applying it.
      if 'does not match' not in str(e):
        raise
      return (f'checkpoint {step} holds the input-pipeline state of another loader (a changed '
              f'data set, data.worker_count or sampler): {str(e).splitlines()[0]}')
    logging.info('input pipeline restored from checkpoint %d', step)
    return ''

  def restore_config(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}.')
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def restore_run_info(self, step: int | None = None) -> dict:
    """The provenance saved with a checkpoint ({} for checkpoints written without it)."""
    step = self.latest_step() if step is None else step
    if step is None or not (self.directory / str(step) / 'run_info').is_dir():
      return {}
    return self._manager.restore(step, args=ocp.args.Composite(
        run_info=ocp.args.JsonRestore()))['run_info']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def save_diagnostic(workdir: str | pathlib.Path, step: int, state: Any,
                    batch: dict[str, jax.Array], info: dict) -> pathlib.Path:
  """Writes the state a failing step started from, its batch and ``info`` (JSON) to
  ``workdir/diagnostics/step_<step>/``, away from the checkpoints a resume looks at.

  Collective, like every save; waits until the files are written.
  """
  directory = pathlib.Path(workdir).absolute() / DIAGNOSTICS_DIR / f'step_{step}'
  if directory.exists() and jax.process_index() == 0:
    shutil.rmtree(directory)
  ocp.multihost.sync_global_processes('finedual_diagnostic_dir')
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(directory, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), batch=ocp.args.StandardSave(batch),
        info=ocp.args.JsonSave(info)))
  return directory


def abstract_like(tree: Any) -> Any:
  """Shape/dtype/sharding skeleton of ``tree`` for ``Checkpointer.restore``."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def git_commit(path: str | pathlib.Path | None = None) -> str:
  """The commit checked out where ``path`` (default: this package) lives, read from ``.git``
  without running git; 'unknown' outside a git checkout."""
  here = pathlib.Path(path or __file__).resolve()
  for folder in (here, *here.parents):
    git = folder / '.git'
    if git.is_file():  # A worktree or submodule: "gitdir: <path>".
      text = git.read_text().strip()
      if not text.startswith('gitdir:'):
        return 'unknown'
      git = (folder / text.split(':', 1)[1].strip()).resolve()
    if git.is_dir():
      return _read_head(git)
  return 'unknown'


def _read_head(git: pathlib.Path) -> str:
  try:
    head = (git / 'HEAD').read_text().strip()
  except OSError:
    return 'unknown'
  if not head.startswith('ref:'):
    return head or 'unknown'  # A detached HEAD holds the commit itself.
  ref = head.split(':', 1)[1].strip()
  common = git
  if (git / 'commondir').is_file():  # Worktrees keep refs in the main repository.
    common = (git / (git / 'commondir').read_text().strip()).resolve()
  for base in (git, common):
    if (base / ref).is_file():
      return (base / ref).read_text().strip() or 'unknown'
    packed = base / 'packed-refs'
    if packed.is_file():
      for line in packed.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == ref:
          return parts[0]
  return 'unknown'


def run_info(**extra) -> dict:
  """Provenance saved with every checkpoint: code commit, library versions, topology."""
  return dict(git_commit=git_commit(), jax_version=jax.__version__,
              process_count=jax.process_count(), device_count=jax.device_count(),
              platform=jax.devices()[0].platform, **extra)


def write_json(path: str | pathlib.Path, value: Any) -> None:
  """Writes ``value`` as JSON atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(value, indent=2))
  tmp.replace(path)
