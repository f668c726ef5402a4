"""Metric files of a workdir: ``metrics.jsonl`` and TensorBoard event files.

``metrics.jsonl`` holds one JSON object per logged step, e.g.::

  {"step": 429, "epoch": 1.0, "examples": 54912, "wall_s": 12.3,
   "train/loss": 0.21, "valid/nll": 0.11, "valid/error": 0.031, ...}

Every row has ``step``, ``epoch``, ``examples`` and ``wall_s``; the metric keys
are ``<split>/<name>``. The same scalars go to TensorBoard (tensorboardX, no
TensorFlow) under ``<workdir>/tb``.

A resumed run first drops the rows after the step it resumes from (they
belong to the lost part of the killed run), so every step appears once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import sys
from typing import Any

import numpy as np

from lnorm.lab.workdir import METRICS_FILE, SUMMARY_DIR, TB_DIR

REQUIRED_KEYS = ('step', 'epoch', 'examples', 'wall_s')


def _plain(value: Any) -> Any:
  """A JSON-friendly Python scalar from a numpy/JAX scalar; NaN and Inf become strings."""
  if isinstance(value, np.generic | np.ndarray) or hasattr(value, '__array__'):
    value = np.asarray(value).item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN; 'nan', 'inf', '-inf' stay readable.
  return value


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Returns the rows of ``<workdir>/metrics.jsonl`` (an empty list if there is none).

  A line that is not a JSON object with an integer ``step`` is skipped with a
  warning naming the file and the line; the rows after it are kept.
  """
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  rows = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      row = None
    if not isinstance(row, dict) or not isinstance(row.get('step'), int):
      # E.g. a row cut short by a kill: skipped, and the rows after it are kept.
      logging.warning('%s:%d: skipping a malformed metrics row: %.60r', path, number, line)
      continue
    rows.append(row)
  return rows


def truncate_metrics(workdir: str | os.PathLike, last_step: int) -> int:
  """Keeps only the rows of ``metrics.jsonl`` with ``step <= last_step``; returns their number."""
  path = pathlib.Path(workdir) / METRICS_FILE
  rows = [r for r in read_metrics(workdir) if r['step'] <= last_step]
  tmp = path.with_suffix('.jsonl.tmp')
  tmp.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  os.replace(tmp, path)
  return len(rows)


def _import_summary_writer():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports PyTorch when it is installed (seconds of start-up) only to
  accept torch tensors; the metrics written here are Python floats, so the
  import is blocked for the moment tensorboardX loads (unless PyTorch is
  already loaded). A later ``import torch`` works as usual.
  """
  if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
    from tensorboardX import SummaryWriter

    return SummaryWriter
  sys.modules['torch'] = None  # An import of a None entry raises ImportError.
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter


class MetricWriter:
  """Appends metric rows to ``metrics.jsonl`` and TensorBoard.

  Args:
    workdir: the run's directory.
    resume_step: the step the run starts from; rows after it are removed from
      ``metrics.jsonl``, and TensorBoard is told to purge its events after it.
    tensorboard: also write TensorBoard event files.
    enabled: write at all; ``False`` checks rows but touches no file (the
      processes other than 0 of a multi-process run).
  """

  def __init__(
    self,
    workdir: str | os.PathLike,
    resume_step: int = 0,
    tensorboard: bool = True,
    enabled: bool = True,
  ):
    self.workdir = pathlib.Path(workdir)
    self.enabled = enabled
    self._file, self._tb = None, None
    if not enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    truncate_metrics(self.workdir, resume_step)
    self._file = open(self.workdir / METRICS_FILE, 'a')  # noqa: SIM115 (closed in close()).
    self._tb = None
    if tensorboard:
      SummaryWriter = _import_summary_writer()
      purge = resume_step + 1 if resume_step > 0 else None
      self._tb = SummaryWriter(str(self.workdir / TB_DIR), purge_step=purge)

  def write(self, row: dict[str, Any]) -> None:
    """Writes one row; it must hold :data:`REQUIRED_KEYS`; other values are scalars."""
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
      raise ValueError(f'metric row lacks {missing}: {row}')
    row = {k: _plain(v) for k, v in row.items()}
    if not self.enabled:
      return
    self._file.write(json.dumps(row) + '\n')
    self._file.flush()
    if self._tb is not None:
      for key, value in row.items():
        if key not in REQUIRED_KEYS and isinstance(value, int | float):
          self._tb.add_scalar(key, value, global_step=row['step'])
      self._tb.flush()

  def write_summaries(self, step: int, summaries: dict[str, Any]) -> None:
    """Writes images (:class:`~lnorm.lab.contract.Image`) and texts to TensorBoard and ``images/``.

    An image is ``<float in [0, 1] | uint8>[H, W]`` or ``[H, W, 3]``; its file is
    ``images/<key with / as ->-<step>.png``.
    """
    from lnorm.lab.contract import Image, Text

    if not self.enabled:
      return
    folder = self.workdir / SUMMARY_DIR
    folder.mkdir(exist_ok=True)
    for key, value in summaries.items():
      stem = f'{key.replace("/", "-")}-{step}'
      if isinstance(value, Image):
        image = np.asarray(value.array)
        if image.dtype != np.uint8:
          image = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
        import matplotlib.image

        matplotlib.image.imsave(
          folder / f'{stem}.png', image, cmap='gray' if image.ndim == 2 else None
        )
        if self._tb is not None:
          self._tb.add_image(
            key, image, global_step=step, dataformats='HW' if image.ndim == 2 else 'HWC'
          )
      elif isinstance(value, Text):
        (folder / f'{stem}.txt').write_text(value.text)
        if self._tb is not None:
          self._tb.add_text(key, value.text, global_step=step)
      else:
        raise TypeError(f'summary {key!r}: expected Image or Text, got {type(value).__name__}.')
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Closes the files."""
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
