"""Batches of in-memory arrays: a seeded, resumable training stream and whole-set evaluation.

Both work unchanged in a multi-process run (:mod:`lnorm.lab.distributed`): the
global batch of a step is the same whatever the number of processes, and each
process feeds only its rows of it (:func:`process_batches`); an evaluation
splits each batch the same way and sums over all processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from lnorm.lab import sharding
from lnorm.lab.contract import TrainData


def batch_indices(
  seed: int, step: int, num_steps: int, num_examples: int, batch_size: int
) -> np.ndarray:
  """Example indices of steps ``step .. step + num_steps - 1``: int64 ``[num_steps, batch_size]``.

  Each epoch visits the examples in a fresh random order (a permutation
  seeded by ``(seed, epoch)``) and drops the last ``num_examples %
  batch_size`` of them, so the batch of a step depends only on the seed and
  the step: resuming from any step gives the same data order.
  """
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    raise ValueError(f'batch size {batch_size} exceeds the {num_examples} training examples.')
  out = np.empty((num_steps, batch_size), np.int64)
  perm, perm_epoch = None, -1
  for i, s in enumerate(range(step, step + num_steps)):
    epoch, pos = divmod(s, per_epoch)
    if epoch != perm_epoch:
      perm, perm_epoch = np.random.default_rng([seed, epoch]).permutation(num_examples), epoch
    out[i] = perm[pos * batch_size : (pos + 1) * batch_size]
  return out


def shuffled(
  num_examples: int,
  batch_size: int,
  seed: int,
  gather: Callable[[np.ndarray], Any],
  *,
  rowwise: bool = False,
) -> TrainData:
  """A :class:`TrainData` visiting ``num_examples`` examples in a fresh order each epoch.

  Args:
    num_examples: the training set's size.
    batch_size: examples per step (an epoch drops the last ``num_examples % batch_size``).
    seed: the data order's seed (see :func:`batch_indices`).
    gather: ``<int64>[batch_size] indices -> host batch``, e.g.
      ``lambda i: {k: v[i] for k, v in arrays.items()}``.
    rowwise: each row of ``gather``'s batch depends only on its own index (no
      padding to the batch's longest example), so a process of a multi-process
      run may gather only its rows (:attr:`TrainData.batch_rows`); otherwise it
      gathers the whole batch and keeps its rows.
  """
  steps_per_epoch = num_examples // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'batch_size={batch_size} exceeds the {num_examples} training examples.')

  def batch_rows(start: int, rows: slice) -> Iterator[Any]:
    step = start
    while True:
      # One epoch's order at a time: the permutation is drawn once per epoch.
      n = steps_per_epoch - step % steps_per_epoch
      for idx in batch_indices(seed, step, n, num_examples, batch_size):
        yield gather(idx[rows])
      step += n

  def batches(start: int) -> Iterator[Any]:
    return batch_rows(start, slice(None))

  return TrainData(
    batches=batches,
    steps_per_epoch=steps_per_epoch,
    batch_size=batch_size,
    batch_rows=batch_rows if rowwise else None,
  )


def shuffled_arrays(arrays: dict[str, np.ndarray], batch_size: int, seed: int) -> TrainData:
  """:func:`shuffled` over a dict of arrays with a common leading axis (row-wise)."""
  n = len(next(iter(arrays.values())))

  def gather(idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in arrays.items()}

  return shuffled(n, batch_size, seed, gather, rowwise=True)


def process_batches(data: TrainData, start: int, mesh: Mesh) -> Iterator[Any]:
  """The host batches of steps ``start, start + 1, ...`` that this process feeds.

  With one process, ``data.batches(start)`` itself. With several, this
  process's rows (:func:`lnorm.lab.sharding.process_rows`) of each global
  batch: read alone through ``data.batch_rows`` when the stream has it,
  otherwise cut from the whole batch. Either way the global batch of a step
  is the one a single process would train on.
  """
  rows = sharding.process_rows(data.batch_size, mesh)
  if rows == slice(0, data.batch_size):
    return data.batches(start)
  if data.batch_rows is not None:
    return data.batch_rows(start, rows)
  return (jax.tree.map(lambda x: np.asarray(x)[rows], b) for b in data.batches(start))


def evaluate_arrays(
  eval_fn: Callable[[Any, Any], dict[str, jax.Array]],
  state: Any,
  data: dict[str, np.ndarray],
  batch_size: int,
  mesh: Mesh,
) -> dict[str, float]:
  """Means over a whole data set of per-example metrics.

  Args:
    eval_fn: a jitted ``(state, batch) -> {name: float32 [B]}`` of per-example values.
    state: the train state (replicated).
    data: arrays with a common leading axis ``N``; they are cut into batches
      of ``batch_size`` (rounded up to a multiple of the device count); the last
      batch is padded and its padding masked out.
    batch_size: the evaluation batch size.
    mesh: the devices' mesh.

  Returns:
    ``{name: mean over the N examples}`` as Python floats.

  With several processes, every process holds all of ``data`` (the
  experiment loaded it), feeds only its rows of each batch, and gets every
  row's values back (:func:`lnorm.lab.sharding.to_host`: a few floats per
  example), so all processes sum the same numbers in the same order as one
  process would, and return the same means. (Each process evaluating a shard
  of the set instead would need a cross-process sum of the means, in another
  order.)
  """
  batch_size = -(-batch_size // mesh.size) * mesh.size
  n = len(next(iter(data.values())))
  sums: dict[str, float] = {}
  for start in range(0, n, batch_size):
    batch = {k: v[start : start + batch_size] for k, v in data.items()}
    m = len(next(iter(batch.values())))
    if m < batch_size:
      batch = {k: np.concatenate([v, np.zeros_like(v[: batch_size - m])]) for k, v in batch.items()}
    values = sharding.to_host(eval_fn(state, sharding.shard_batch(batch, mesh)))
    for k, v in values.items():
      sums[k] = sums.get(k, 0.0) + float(np.asarray(v, np.float64)[:m].sum())
  return {k: v / n for k, v in sums.items()}
