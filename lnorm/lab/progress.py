"""Progress report of a training run: a one-line bar on a terminal, log lines otherwise.

On a TTY the bar redraws in place::

  [########------------]  41% 3520/8580 step  2.3k ex/s  ETA 1m52s  loss 0.1321

When stdout is not a terminal (CI, a log file, ``nohup``) the same figures
are printed as plain lines at most every ``min_interval_s`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
  """``'1h02m'``, ``'3m07s'`` or ``'12s'``; ``'?'`` for an unknown duration."""
  if seconds != seconds or seconds < 0 or seconds == float('inf'):
    return '?'
  s = int(round(seconds))
  if s >= 3600:
    return f'{s // 3600}h{s % 3600 // 60:02d}m'
  if s >= 60:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s}s'


def format_rate(rate: float) -> str:
  """``'950'``, ``'2.3k'``, ``'1.2M'``."""
  if rate >= 1e6:
    return f'{rate / 1e6:.1f}M'
  if rate >= 1e3:
    return f'{rate / 1e3:.1f}k'
  return f'{rate:.0f}'


class Progress:
  """Reports ``step`` out of ``total`` with the rate in examples/s and the ETA.

  The rate is measured from the first :meth:`update` (so compilation before
  it does not count) and covers the steps done in this process only.

  Args:
    total: the last step of the run.
    initial: the step the run starts (or resumes) from.
    examples_per_step: the global batch size.
    stream: where to write (default ``sys.stdout``).
    tty: draw a bar in place (default: whether ``stream`` is a terminal).
    min_interval_s: least time between two plain lines (TTY: between redraws).
    width: the bar's width in characters.
    enabled: report at all (a multi-process run reports from process 0 only).
  """

  def __init__(
    self,
    total: int,
    initial: int = 0,
    examples_per_step: int = 1,
    stream: TextIO | None = None,
    tty: bool | None = None,
    min_interval_s: float = 10.0,
    width: int = 20,
    enabled: bool = True,
  ):
    self.total = total
    self.examples_per_step = examples_per_step
    self.stream = sys.stdout if stream is None else stream
    isatty = getattr(self.stream, 'isatty', lambda: False)
    self.tty = isatty() if tty is None else tty
    self.min_interval_s = 0.2 if self.tty else min_interval_s
    self.width = width
    self.enabled = enabled
    self._start_step = initial
    self._start_time: float | None = None
    self._last_print = -float('inf')

  def line(self, step: int, now: float, extra: str = '') -> str:
    """The text of the report at ``step`` and time ``now`` (seconds)."""
    frac = step / self.total if self.total else 1.0
    done = step - self._start_step
    elapsed = now - self._start_time if self._start_time is not None else 0.0
    rate = done * self.examples_per_step / elapsed if elapsed > 0 and done > 0 else 0.0
    steps_per_s = done / elapsed if elapsed > 0 and done > 0 else 0.0
    eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float('nan')
    fill = int(self.width * frac)
    bar = '#' * fill + '-' * (self.width - fill)
    text = (
      f'[{bar}] {100 * frac:3.0f}% {step}/{self.total} step  {format_rate(rate)} ex/s'
      f'  ETA {format_duration(eta)}'
    )
    return f'{text}  {extra}' if extra else text

  def update(self, step: int, extra: str = '', force: bool = False) -> None:
    """Reports ``step``; draws only if ``min_interval_s`` has passed (or ``force``)."""
    if not self.enabled:
      return
    now = time.perf_counter()
    if self._start_time is None:
      self._start_time, self._start_step = now, step
    if not force and now - self._last_print < self.min_interval_s and step < self.total:
      return
    self._last_print = now
    text = self.line(step, now, extra)
    if self.tty:
      self.stream.write('\r' + text + '\x1b[K')
    else:
      self.stream.write(text + '\n')
    self.stream.flush()

  def close(self) -> None:
    """Ends the bar's line on a terminal."""
    if self.tty and self.enabled:
      self.stream.write('\n')
      self.stream.flush()
