"""Checkpoints of a run (orbax): the train state and JSON metadata by step."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores ``(train state, JSON metadata)`` pairs by step with orbax.

  Saves run in the background; a checkpoint becomes visible only once it is
  complete, so a run killed mid-save resumes from the previous one.

  Args:
    directory: where the checkpoints go (``<workdir>/checkpoints``).
    max_to_keep: how many of the latest checkpoints to keep.
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
    )
    self._manager = ocp.CheckpointManager(
      pathlib.Path(directory).absolute(), options=options, item_names=('state', 'meta')
    )

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or ``None``."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of the kept checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts saving ``state`` (a pytree of arrays) and ``meta`` (JSON data) as ``step``."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    self._manager.save(step, args=args, force=True)

  def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint ``step`` with the structure, dtypes and shardings of ``like``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    return restored.state, restored.meta

  def wait(self) -> None:
    """Blocks until background saves are done."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for saves and releases the manager."""
    self._manager.close()
