"""Devices: the data-parallel mesh, shardings, the host -> device path and the step wrapper.

The training step is written per device, in the pmap programming model (gradients averaged with
``lax.pmean`` over ``DATA_AXIS``). ``DataParallel`` runs it through ``jax.shard_map`` under
``jax.jit`` on a 1-D mesh (the default: what ``jax.pmap`` itself became in JAX 0.8), or through
``jax.pmap``. Outside this module every replicated tree (train state, parameters) has its
*global* form: plain shapes, replicated over the mesh; the pmap backend's form, with a leading
device axis, never leaves this module. This is the only module that knows about devices.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'
BACKENDS = ('shard_map', 'pmap')


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins a multi-process run (one process per host or per GPU) before any device is used.

  Arguments left as None are detected by JAX on TPU pods, SLURM and Open MPI, or read from
  ``JAX_COORDINATOR_ADDRESS``. Processes on CPUs need a cross-process collectives
  implementation: gloo (JAX 0.10's default), set here unless the environment chose one with
  ``JAX_CPU_COLLECTIVES_IMPLEMENTATION``.
  """
  if 'JAX_CPU_COLLECTIVES_IMPLEMENTATION' not in os.environ:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def barrier(name: str) -> None:
  """Waits until every process gets here (nothing to wait for with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over ``num_devices`` devices (0: all of them)."""
  available = jax.device_count()
  num_devices = num_devices or available
  if not 1 <= num_devices <= available:
    raise ValueError(f'parallel.num_devices: asked for {num_devices} devices, but JAX sees '
                     f'{available} ({jax.devices()[0].platform}).')
  if jax.process_count() > 1 and num_devices != available:
    raise ValueError(f'parallel.num_devices: a run of {jax.process_count()} processes uses '
                     f'every device ({available}); found {num_devices}. Set it to 0.')
  return mesh_over(jax.devices()[:num_devices])


def mesh_over(devices: Sequence[jax.Device]) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over exactly ``devices`` (e.g. compile-only devices of a TPU
  topology, for planning memory from another host)."""
  # Auto axis types: make_mesh defaults to Explicit sharding, which this code does not use.
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=list(devices))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch: int, mesh: jax.sharding.Mesh, grad_accum_steps: int = 1) -> int:
  """This process's share of ``global_batch``, checking it splits evenly over the devices and
  the accumulation steps (each device runs ``grad_accum_steps`` equal micro-batches)."""
  devices = mesh.devices.size
  if global_batch % (devices * grad_accum_steps):
    raise ValueError(f'train.batch_size={global_batch} must be a multiple of the number of '
                     f'devices ({devices}) times train.grad_accum_steps ({grad_accum_steps}).')
  return global_batch // jax.process_count()


def to_device(batch: Mapping[str, np.ndarray],
              mesh: jax.sharding.Mesh) -> dict[str, jax.Array | np.ndarray]:
  """The one host -> device function: this process's rows become one global batch-sharded array.

  A mesh of CPU devices in one process gets the host arrays back as they are: a CPU device's
  memory is host memory, so there is no transfer to overlap with the running step, and the
  compiled step places NumPy arguments itself in its C++ dispatch. Measured on a 2-core CPU: a
  call with a tiny model's four batch arrays took 0.06 ms with NumPy arguments against 0.29 ms
  with ``device_put`` first, and while the tiny FineDual step ran, ``device_put`` of the next
  batch lengthened it by 0.47 ms where NumPy arguments cost nothing measurable.
  """
  arrays = {k: np.asarray(v) for k, v in batch.items()}
  sharding = batch_sharding(mesh)
  if sharding.is_fully_addressable:
    if all(device.platform == 'cpu' for device in mesh.devices.flat):
      return arrays
    return jax.device_put(arrays, sharding)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in arrays.items()}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Host values or arrays, equal on every process -> arrays replicated over ``mesh``."""
  sharding = replicated(mesh)
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)
  devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]

  def put(x):  # device_put cannot target other processes' devices: assemble from local copies.
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_shards[0].data
    return jax.make_array_from_single_device_arrays(
        jnp.shape(x), sharding, [jax.device_put(x, d) for d in devices])

  return jax.tree.map(put, tree)


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


def process_local(tree: Any) -> Any:
  """A global replicated tree -> copies on this process's first device, for host-side work
  (sampling, rendering) that must not involve the other processes."""
  return jax.tree.map(lambda x: x.addressable_shards[0].data, tree)


class DataParallel:
  """Runs per-device functions over a 1-D mesh with one of ``BACKENDS``.

  ``put`` turns a replicated tree in its global form into the backend's form, ``get`` turns it
  back (for checkpoints, evaluation and sampling), ``to_device`` places this process's batch
  rows, ``compile`` wraps a per-device ``fn(replicated, batch) -> outputs`` (replicated
  outputs) and ``fetch`` reads such outputs back to the host as Python numbers.
  """

  def __init__(self, mesh: jax.sharding.Mesh, backend: str = 'shard_map'):
    if backend not in BACKENDS:
      raise ValueError(f'parallel.backend: expected one of {list(BACKENDS)}, found {backend!r}.')
    self.mesh = mesh
    self.backend = backend
    # pmap's view: this process's devices, in mesh order, each holding one slice of its
    # leading device axis. Inputs and outputs of jax.pmap are process-local.
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    self._local_mesh = Mesh(np.asarray(local), (DATA_AXIS,))
    self._stack = jax.jit(
        lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x[None], (len(local),) + x.shape),
                              tree), out_shardings=NamedSharding(self._local_mesh, P(DATA_AXIS)))
    self._first = jax.jit(lambda tree: jax.tree.map(lambda x: x[0], tree),
                          out_shardings=replicated(self._local_mesh))

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  def compile(self, per_device_fn: Callable, *, donate: bool = False) -> Callable:
    """``per_device_fn(replicated, batch) -> replicated outputs``, compiled for the backend.

    With ``donate`` the first argument's buffers are reused for the outputs: the caller must
    use the returned tree and drop the one it passed.
    """
    if self.backend == 'shard_map':
      fn = jax.shard_map(per_device_fn, mesh=self.mesh, in_specs=(P(), P(DATA_AXIS)),
                         out_specs=P())
      return jax.jit(fn, donate_argnums=0 if donate else ())
    return jax.pmap(per_device_fn, axis_name=DATA_AXIS, devices=list(self.mesh.devices.flat),
                    donate_argnums=0 if donate else ())

  def put(self, tree: Any) -> Any:
    """A replicated tree (host values or global arrays) -> the backend's form."""
    if self.backend == 'shard_map':
      return replicate(tree, self.mesh)
    tree = jax.tree.map(  # A global array spanning other processes: this process's copy.
        lambda x: x.addressable_shards[0].data
        if isinstance(x, jax.Array) and not x.is_fully_addressable else x, tree)
    return self._stack(jax.device_put(tree, replicated(self._local_mesh)))

  def get(self, tree: Any) -> Any:
    """The backend's form of a replicated tree -> its global form (replicated over the mesh)."""
    if self.backend == 'shard_map':
      return tree
    local = self._first(tree)
    sharding = replicated(self.mesh)
    return jax.tree.map(lambda x: jax.make_array_from_single_device_arrays(
        x.shape, sharding, [s.data for s in x.addressable_shards]), local)

  def to_device(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of a batch -> the backend's input ([devices, per-device, ...] for
    pmap, one global batch-sharded array for shard_map)."""
    if self.backend == 'shard_map':
      return to_device(batch, self.mesh)
    devices = self._local_mesh.devices.size
    sharding = NamedSharding(self._local_mesh, P(DATA_AXIS))
    out = {}
    for key, value in batch.items():
      value = np.asarray(value)
      out[key] = jax.device_put(value.reshape(devices, value.shape[0] // devices,
                                              *value.shape[1:]), sharding)
    return out

  def fetch(self, outputs: Mapping[str, jax.Array]) -> dict[str, float | int]:
    """Replicated scalar outputs -> host numbers (blocks until they are computed)."""
    host = jax.device_get(dict(outputs))
    if self.backend == 'pmap':  # One copy per local device; they are equal.
      host = {k: v[0] for k, v in host.items()}
    return {k: int(v) if np.issubdtype(np.asarray(v).dtype, np.integer) else float(v)
            for k, v in host.items()}
