"""Data parallelism over all local devices with ``jax.sharding``.

One mesh axis, ``data``, spans every device. The training state is replicated
on each device; batches are split over ``data`` along their batch axis. Under
``jax.jit`` XLA then computes the step as if on one device holding the whole
batch: gradients are averaged over the global batch and batch-norm statistics
are those of the global batch, with no change to the model code. The same
program runs on 1 CPU or N accelerators.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all local devices)."""
  devices = jax.local_devices() if devices is None else devices
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
    raise ValueError(
      f'batch size {batch_size} does not split over {n} devices; use a multiple of {n} '
      f'or fewer devices (e.g. CUDA_VISIBLE_DEVICES).'
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts every array of ``tree`` on all devices of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(tree: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
  """Puts every array of ``tree`` on ``mesh``, split over ``data`` along ``batch_axis``."""
  return jax.device_put(tree, batch_sharding(mesh, batch_axis))
