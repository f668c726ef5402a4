"""Data parallelism over every device of every process with ``jax.sharding``.

One mesh axis, ``data``, spans all devices of the run (``jax.devices()``: with
several processes, theirs too; each process's devices sit together in the
mesh). The training state is replicated on each device; batches are split over
``data`` along their batch axis. Under ``jax.jit`` XLA then computes the step as
if on one device holding the whole batch: gradients are averaged over the
global batch and batch-norm statistics are those of the global batch, with no
change to the model code. The same program runs on 1 CPU, N accelerators, or
N processes on M machines.

With several processes, each one holds only its devices' rows of a global
batch: :func:`process_rows` says which, :func:`shard_batch` assembles the
global array from them (``jax.make_array_from_process_local_data``), and
:func:`to_host` brings a result split over processes back whole to every
process. With one process these reduce to ``jax.device_put`` and
``np.asarray``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``'data'`` over ``devices``.

  The default is every device of the run, ordered by process then id, so that
  each process's devices, and so its rows of a batch, are contiguous.
  """
  if devices is None:
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of a value copied whole onto every device of ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  """The sharding that splits axis ``batch_axis`` of an array over the ``data`` axis."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Raises a ValueError unless ``batch_size`` splits evenly over the mesh's devices."""
  n = mesh.shape[DATA_AXIS]
  if batch_size % n:
    procs = {d.process_index for d in mesh.devices.flat}
    where = f'{n} devices' + (f' of {len(procs)} processes' if len(procs) > 1 else '')
    raise ValueError(
      f'batch size {batch_size} does not split over {where}; use a multiple of {n} '
      f'or fewer devices (e.g. CUDA_VISIBLE_DEVICES, or fewer processes).'
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts every array of ``tree`` on all devices of ``mesh`` (every process passes the same).

  ``jax.device_put`` cannot put a PRNG key onto other processes' devices, so a
  key goes there as its raw data and is wrapped again.
  """
  sharding = replicated(mesh)
  if not _spans_processes(mesh):
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = jax.device_put(jax.random.key_data(x), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)


def _spans_processes(mesh: Mesh) -> bool:
  return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def process_rows(batch_size: int, mesh: Mesh) -> slice:
  """The rows of a global batch of ``batch_size`` that this process's devices hold.

  All rows with one process. With several, the shards of this process's
  devices (:func:`make_mesh` keeps them contiguous).

  Raises:
    ValueError: the mesh interleaves this process's devices with others'.
  """
  if not _spans_processes(mesh):
    return slice(0, batch_size)
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  spans = sorted(index[0].indices(batch_size)[:2] for index in index_map.values())
  if any(a[1] != b[0] for a, b in zip(spans, spans[1:], strict=False)):
    raise ValueError(
      f"this process's devices are not contiguous in the mesh {mesh.devices.tolist()}: "
      'order the devices by process (sharding.make_mesh does).'
    )
  return slice(spans[0][0], spans[-1][1])


def shard_batch(tree: Any, mesh: Mesh, batch_axis: int = 0, *, local: bool = False) -> Any:
  """Puts every array of ``tree`` on ``mesh``, split over ``data`` along ``batch_axis``.

  Args:
    tree: host arrays (numpy) sharing the batch axis.
    mesh: the run's mesh.
    batch_axis: the axis split over the devices.
    local: ``tree`` holds only this process's rows (:func:`process_rows`) of
      the global batch; otherwise it holds the whole global batch (the same on
      every process), and each process feeds only its rows of it.

  Returns:
    Global arrays, each process's devices holding their rows.
  """
  sharding = batch_sharding(mesh, batch_axis)
  if not _spans_processes(mesh):
    return jax.device_put(tree, sharding)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

  def put(x):
    x = np.asarray(x)
    shape = list(x.shape)
    if local:
      shape[batch_axis] = x.shape[batch_axis] * mesh.size // local_devices
    else:
      index = [slice(None)] * x.ndim
      index[batch_axis] = process_rows(x.shape[batch_axis], mesh)
      x = x[tuple(index)]
    return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

  return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
  """The whole value of every array of ``tree`` as numpy, on every process.

  Arrays split over several processes (an evaluation's per-example values) are
  gathered (``multihost_utils.process_allgather``: a collective every process
  must call); the others are read where they are.
  """

  def get(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, tree)
