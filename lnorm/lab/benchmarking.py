"""Small helpers for benchmarks that report ratios measured in one process.

Timings on a shared CPU are noisy, so every comparison here is a ratio of
medians of interleaved runs: each repetition calls every function once, in
turn, after all of them are compiled and warmed up. Besides wall time, the
process CPU time of each call is recorded (all threads together), which is
less sensitive to other processes on the machine.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax


@dataclass
class Compiled:
  """A jitted function compiled for fixed arguments, with what XLA says about it."""

  name: str
  call: Callable[..., Any]
  args: tuple
  compile_s: float
  memory: dict[str, int] = field(default_factory=dict)


def compile_fn(name: str, fn: Callable, *args, donate_argnums=()) -> Compiled:
  """Jits and compiles ``fn`` for ``args``; records compile time and XLA's memory analysis.

  ``memory`` holds ``argument``, ``output``, ``temp``, ``alias`` and ``peak``
  bytes (``peak`` is XLA's own figure where it gives one, else
  argument + output + temp - alias).
  """
  lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*args)
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  memory = {}
  stats = compiled.memory_analysis()
  if stats is not None:
    memory = {
      'argument': int(stats.argument_size_in_bytes),
      'output': int(stats.output_size_in_bytes),
      'temp': int(stats.temp_size_in_bytes),
      'alias': int(stats.alias_size_in_bytes),
    }
    peak = int(getattr(stats, 'peak_memory_in_bytes', 0) or 0)
    memory['peak'] = peak or (
      memory['argument'] + memory['output'] + memory['temp'] - memory['alias']
    )
  return Compiled(name, compiled, args, compile_s, memory)


def eager(name: str, fn: Callable, *args) -> Compiled:
  """A function run as is (e.g. PyTorch eager), timed like a compiled one.

  ``fn(*args)`` must return once its work is done (PyTorch on CPU is
  synchronous); ``compile_s`` is 0 and ``memory`` empty.
  """
  return Compiled(name, fn, args, 0.0)


def residual_bytes(fn: Callable, *args) -> int:
  """Bytes that reverse mode keeps from ``fn``'s forward pass for its backward pass.

  The leaves of the function ``jax.vjp`` returns are exactly its residuals
  (arguments it keeps count too).
  """
  pullback = jax.eval_shape(lambda *a: jax.vjp(fn, *a)[1], *args)
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(pullback))


@dataclass
class Timing:
  """Per-call wall and CPU seconds of one function over the repetitions."""

  wall: list[float]
  cpu: list[float]

  @property
  def median(self) -> float:
    return statistics.median(self.wall)

  @property
  def cpu_median(self) -> float:
    return statistics.median(self.cpu)


def time_interleaved(
  fns: Sequence[Compiled], reps: int, warmup: int = 1, min_seconds: float = 0.0
) -> dict[str, Timing]:
  """Calls each compiled function once per repetition, in turn; returns the timings.

  Runs at least ``reps`` repetitions, and more (up to ``4 * reps``) until
  ``min_seconds`` have passed.
  """
  for f in fns:
    for _ in range(warmup):
      jax.block_until_ready(f.call(*f.args))
  out = {f.name: Timing([], []) for f in fns}
  start = time.perf_counter()
  rep = 0
  while rep < reps or (rep < 4 * reps and time.perf_counter() - start < min_seconds):
    for f in fns:
      c0, t0 = time.process_time(), time.perf_counter()
      jax.block_until_ready(f.call(*f.args))
      out[f.name].wall.append(time.perf_counter() - t0)
      out[f.name].cpu.append(time.process_time() - c0)
    rep += 1
  return out


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as fh:
      for line in fh:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def machine_info() -> dict[str, Any]:
  """CPU model, cores, memory, load, library versions and the settings that change timings."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  mem_gib = None
  try:
    with open('/proc/meminfo') as fh:
      kib = int(fh.readline().split()[1])
      mem_gib = round(kib / 2**20, 1)
  except (OSError, ValueError, IndexError):
    pass
  versions = {
    d: _version(d) for d in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'torch') if _version(d)
  }
  return {
    'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
    'cpu': _cpu_model(),
    'cores': cores,
    'memory_gib': mem_gib,
    'load_average': [round(v, 2) for v in os.getloadavg()],
    'devices': [str(d) for d in jax.devices()],
    'python': platform.python_version(),
    'versions': versions,
    'GLIBC_TUNABLES': os.environ.get('GLIBC_TUNABLES', ''),
    'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''),
  }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub markdown table."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def fmt_ms(seconds: float) -> str:
  return f'{seconds * 1e3:.3g}' if seconds < 1 else f'{seconds * 1e3:.0f}'


def fmt_bytes(n: int | float) -> str:
  for unit, scale in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if n >= scale:
      return f'{n / scale:.3g} {unit}'
  return f'{int(n)} B'


def ratio(a: float, b: float) -> str:
  return f'{a / b:.2f}x'


def load_note(info: Mapping[str, Any]) -> str:
  """One line saying how busy the machine was when the run started and ended."""
  start = info.get('load_average')
  end = [round(v, 2) for v in os.getloadavg()]
  return f'load average (1, 5, 15 min) at start {start}, at end {end}, on {info.get("cores")} cores'


def time_stateful(
  runners: Mapping[str, Callable[[], None]],
  reps: int,
  warmup: int = 2,
  target_s: float = 0.5,
) -> dict[str, Timing]:
  """Times functions that carry their own state (a training loop), interleaved.

  Each runner performs one unit of work per call (e.g. one jitted call of
  several training steps) and returns once the work is done. After
  ``warmup`` calls each, one more call calibrates how many calls fill about
  ``target_s`` seconds; each repetition then runs that many calls of every
  runner in turn. The timings are per call.
  """
  counts = {}
  for name, run in runners.items():
    for _ in range(warmup):
      run()
    t0 = time.perf_counter()
    run()
    counts[name] = max(1, round(target_s / max(time.perf_counter() - t0, 1e-9)))
  out = {name: Timing([], []) for name in runners}
  for _ in range(reps):
    for name, run in runners.items():
      n = counts[name]
      c0, t0 = time.process_time(), time.perf_counter()
      for _ in range(n):
        run()
      out[name].wall.append((time.perf_counter() - t0) / n)
      out[name].cpu.append((time.process_time() - c0) / n)
  return out
