"""Checkpoints of a run (orbax): the train state and JSON metadata by step, self-verifying.

Each saved step records, in its metadata, a sha256 digest of every array of the
state (with its path, dtype and shape). :meth:`Checkpointer.restore_latest`
checks it: a checkpoint that cannot be read (truncated or missing files) or
whose arrays do not match their digest (flipped bytes) is reported in one
line, moved aside to ``<workdir>/damaged-checkpoints/`` (never deleted), and
the run falls back to the newest intact one. Damage is never mistaken for
divergence.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lnorm.lab import distributed

DAMAGED_DIR = 'damaged-checkpoints'


class CheckpointError(RuntimeError):
  """No intact checkpoint to resume from, or a checkpoint that cannot be written."""


class DamagedCheckpoint(Exception):
  """One checkpoint that cannot be restored; ``reason`` says why."""

  def __init__(self, step: int, reason: str):
    super().__init__(f'checkpoint of step {step} is damaged: {reason}')
    self.step, self.reason = step, reason


def _host_value(x: Any) -> np.ndarray:
  """The whole value of an array on this host (a replicated array's local copy)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


def tree_digest(tree: Any) -> str:
  """sha256 of every leaf's path, dtype, shape and bytes, in tree order."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = np.ascontiguousarray(_host_value(leaf))
    h.update(f'{jax.tree_util.keystr(path)}|{value.dtype}|{value.shape}|'.encode())
    h.update(value.tobytes())
  return h.hexdigest()


def _short(error: BaseException) -> str:
  text = ' '.join(str(error).split()) or type(error).__name__
  return text if len(text) <= 160 else text[:157] + '...'


class Checkpointer:
  """Saves and restores ``(train state, JSON metadata)`` pairs by step with orbax.

  Saves run in the background; a checkpoint becomes visible only once it is
  complete, so a run killed mid-save resumes from the previous one.

  Args:
    directory: where the checkpoints go (``<workdir>/checkpoints``).
    max_to_keep: how many of the latest checkpoints to keep.
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=('state', 'meta')
    )

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or ``None``."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of the kept checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts saving ``state`` (a pytree of arrays) and ``meta`` (JSON data) as ``step``.

    ``meta`` gets the state's :func:`tree_digest` under ``'digest'``.

    Raises:
      CheckpointError: the save failed (disk full, permission lost, ...); the
        earlier checkpoints are untouched.
    """
    meta = dict(meta, digest=tree_digest(state))
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    try:
      self._manager.save(step, args=args, force=True)
    except OSError as e:
      raise CheckpointError(f'cannot write the checkpoint of step {step} in '
                            f'{self.directory}: {_short(e)}') from e  # fmt: skip

  def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint ``step`` with the structure, dtypes and shardings of ``like``.

    Raises:
      DamagedCheckpoint: it cannot be read, or its arrays do not match their digest.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    try:
      restored = self._manager.restore(step, args=args)
    except Exception as e:  # Orbax raises many kinds for unreadable files.
      raise DamagedCheckpoint(step, _short(e)) from e
    meta = restored.meta
    if not isinstance(meta, dict):
      raise DamagedCheckpoint(step, 'its metadata is missing')
    if 'digest' in meta and tree_digest(restored.state) != meta['digest']:
      raise DamagedCheckpoint(step, 'its arrays do not match the digest saved with them')
    return restored.state, meta

  def move_aside(self, step: int) -> pathlib.Path:
    """Moves checkpoint ``step`` to ``<workdir>/damaged-checkpoints/<step>-<time>``."""
    target = self.directory.parent / DAMAGED_DIR / f'{step}-{time.strftime("%Y%m%dT%H%M%S")}'
    if jax.process_index() == 0:  # One process moves it; the others wait for the move.
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.directory / str(step)), str(target))
    distributed.barrier(f'move-aside-{step}')
    self._manager.reload()
    return target

  def restore_latest(
    self, like: Any, max_step: int | None = None
  ) -> tuple[Any, dict[str, Any], int] | None:
    """The newest intact checkpoint as ``(state, meta, step)``; ``None`` if there is none.

    Only steps up to ``max_step`` are considered (all when ``None``). Damaged ones
    are reported (one warning line each) and moved aside.

    Raises:
      CheckpointError: checkpoints exist but none is intact; the message names
        the directory and what to do.
    """
    steps = [s for s in self.all_steps() if max_step is None or s <= max_step]
    for step in reversed(steps):
      try:
        state, meta = self.restore(step, like)
      except DamagedCheckpoint as e:
        target = self.move_aside(step)
        logging.warning('%s; moved to %s; trying the one before.', e, target)
        continue
      return state, meta, step
    if steps:
      raise CheckpointError(
        f'no intact checkpoint in {self.directory} (the damaged ones are in '
        f'{self.directory.parent / DAMAGED_DIR}): delete the workdir to start over, or use '
        'a new --workdir.'
      )
    return None

  def wait(self) -> None:
    """Blocks until background saves are done.

    Raises:
      CheckpointError: a background save failed.
    """
    try:
      self._manager.wait_until_finished()
    except OSError as e:
      raise CheckpointError(f'cannot write a checkpoint in {self.directory}: {_short(e)}') from e

  def close(self) -> None:
    """Waits for saves and releases the manager."""
    self._manager.close()
