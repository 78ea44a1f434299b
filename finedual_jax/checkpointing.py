"""Checkpoints of the whole train state with orbax; the only module that imports orbax."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class _IteratorSnapshot:
  """A grain iterator state taken earlier, saved by grain's orbax handler like an iterator."""

  def __init__(self, state: bytes):
    self._state = state

  def get_state(self) -> bytes:
    return self._state


class Checkpointer:
  """Saves and restores ``{'state': TrainState, 'config': dict, 'data': iterator state}``.

  Checkpoints live under ``workdir/checkpoints``. The input pipeline's state is saved per
  process by grain's handler, so a resumed run reads exactly the batches it would have read.
  """

  def __init__(self, workdir: str | pathlib.Path, *, max_to_keep: int = 3):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, config: dict, data_state: bytes | None = None) -> None:
    """Saves ``state`` and ``config``, and the iterator state ``data_state`` if given.

    ``data_state`` is ``iterator.get_state()`` taken right after the step's batch was read,
    so batches read ahead (prefetching) are not counted as consumed.
    """
    items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
    if data_state is not None:
      items['data'] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_state))
    self._manager.save(step, args=ocp.args.Composite(**items))

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores onto ``abstract_state`` (a tree of ShapeDtypeStructs with shardings)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}.')
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore()))
    return restored['state'], restored['config']

  def restore_data(self, iterator: Any, step: int | None = None) -> str:
    """Sets ``iterator`` to the input-pipeline state saved at ``step``.

    Returns '' on success, else why it could not (no data state in that checkpoint, or one
    saved by a different number of processes); the iterator is then left as it was.
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
    self._manager.restore(step, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(iterator)))
    logging.info('input pipeline restored from checkpoint %d', step)
    return ''

  def restore_config(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}.')
    return self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """Shape/dtype/sharding skeleton of ``tree`` for ``Checkpointer.restore``."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
