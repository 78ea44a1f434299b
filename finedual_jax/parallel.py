"""Devices: the data-parallel mesh, shardings, the host -> device path and the step wrapper.

The training step is written per device, in the pmap programming model (gradients averaged with
``lax.pmean`` over ``DATA_AXIS``), and runs through ``jax.shard_map`` under ``jax.jit`` on a
1-D mesh. This is the only module that knows about devices.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over ``num_devices`` devices (0: all of them)."""
  available = jax.device_count()
  num_devices = num_devices or available
  if not 1 <= num_devices <= available:
    raise ValueError(f'parallel.num_devices: asked for {num_devices} devices, but JAX sees '
                     f'{available} ({jax.devices()[0].platform}).')
  # Auto axis types: make_mesh defaults to Explicit sharding, which this code does not use.
  return jax.make_mesh((num_devices,), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:num_devices])


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch: int, mesh: jax.sharding.Mesh) -> int:
  """This process's share of ``global_batch``, checking it splits evenly over the devices."""
  devices = mesh.devices.size
  if global_batch % devices:
    raise ValueError(f'train.batch_size={global_batch} must be a multiple of the number of '
                     f'devices ({devices}).')
  return global_batch // jax.process_count()


def to_device(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """The one host -> device function: this process's rows become one global batch-sharded array."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def data_parallel(per_device_step: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """Compiles ``per_device_step(state, batch) -> (state, metrics)`` for the mesh.

  State and metrics are replicated; the batch is split along its first axis. The state is
  donated, so the caller must use the returned state.
  """
  step = jax.shard_map(per_device_step, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                       out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=0)


def example_indices(local_batch: int) -> jax.Array:
  """Inside a per-device step: the global index of each local example, [local_batch].

  Randomness keyed on these indices does not depend on how the batch is split over devices.
  """
  return jax.lax.axis_index(DATA_AXIS) * local_batch + jax.numpy.arange(local_batch)
