"""Builds and loads lnorm's C++ CPU kernels (``lnorm/csrc``) and registers them with XLA.

The kernels (``csrc/layer_norm.cc``: layer norm; ``csrc/recurrent_cells.cc``: the
LN-LSTM and LN-GRU state updates) are compiled into one library on first use with the
system's C++ compiler against the XLA FFI headers of the installed jaxlib
(``jax.ffi.include_dir()``), into a cache directory keyed by the source, the
jaxlib version, the compiler and the CPU's instruction-set flags (it is built
with ``-march=native``). ``make setup`` builds it once ahead of time
(``python -m lnorm._ffi``). Nothing here is needed for correctness: when there
is no compiler, no headers, or the build or load fails, :func:`layer_norm_kernel`
says so (logged once at debug level) and ``lnorm.functional.layer_norm`` and
``lnorm.fused_cells`` use their XLA paths.

Environment:

* ``LNORM_LAYER_NORM_KERNEL``: ``0``/``xla``/``off``/``false`` forces the XLA
  paths of every kernel here (read when ``layer_norm`` or a cell is traced);
  unset or anything else uses the kernels where they can.
* ``LNORM_CACHE_DIR``: where the compiled library goes (default
  ``$XDG_CACHE_HOME/lnorm/ffi``, else ``~/.cache/lnorm/ffi``).
* ``CXX``: the compiler (default ``g++``, else ``c++``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

import jax

log = logging.getLogger(__name__)

CSRC = pathlib.Path(__file__).resolve().parent / 'csrc'
#: The translation units of the library (the headers next to them are part of its cache key).
SOURCES = (CSRC / 'layer_norm.cc', CSRC / 'recurrent_cells.cc')
ENV_SWITCH = 'LNORM_LAYER_NORM_KERNEL'
_OFF = ('0', 'xla', 'off', 'false', 'no')
#: FFI target names, as registered with XLA (platform 'cpu').
FWD_TARGET = 'lnorm_layer_norm_fwd'
BWD_TARGET = 'lnorm_layer_norm_bwd'
LSTM_FWD_TARGET = 'lnorm_ln_lstm_fwd'
LSTM_BWD_TARGET = 'lnorm_ln_lstm_bwd'
GRU_FWD_TARGET = 'lnorm_ln_gru_fwd'
GRU_BWD_TARGET = 'lnorm_ln_gru_bwd'
#: (target, symbol in the library) of every kernel.
_HANDLERS = (
  (FWD_TARGET, 'LnormLayerNormFwd'),
  (BWD_TARGET, 'LnormLayerNormBwd'),
  (LSTM_FWD_TARGET, 'LnormLnLstmFwd'),
  (LSTM_BWD_TARGET, 'LnormLnLstmBwd'),
  (GRU_FWD_TARGET, 'LnormLnGruFwd'),
  (GRU_BWD_TARGET, 'LnormLnGruBwd'),
)


def kernel_enabled() -> bool:
  """False when ``$LNORM_LAYER_NORM_KERNEL`` forces the XLA path."""
  return os.environ.get(ENV_SWITCH, '').strip().lower() not in _OFF


def cache_dir() -> pathlib.Path:
  if os.environ.get('LNORM_CACHE_DIR'):
    return pathlib.Path(os.environ['LNORM_CACHE_DIR'])
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(base) / 'lnorm' / 'ffi'


def compiler() -> str | None:
  """The C++ compiler to build with, or None if there is none."""
  for name in (os.environ.get('CXX'), 'g++', 'c++'):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def headers_dir() -> pathlib.Path | None:
  """The installed jaxlib's XLA FFI headers, or None if it ships none."""
  try:
    include = pathlib.Path(jax.ffi.include_dir())
  except Exception:  # An old or unusual jaxlib: no kernel, the XLA path.
    return None
  return include if (include / 'xla' / 'ffi' / 'api' / 'ffi.h').is_file() else None


def _cpu_flags() -> str:
  # -march=native code must not be loaded on another CPU sharing the cache directory.
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(('flags', 'Features')):
          return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


#: Compiler flags of the library (before the include directory, sources and output).
COMPILE_FLAGS = (
  '-O3',
  '-march=native',
  # No fused multiply-adds: g*dy - mean(g*dy) must cancel exactly where it does in the XLA
  # path (width 1: dx is 0, not the product's rounding error times 1/sqrt(eps)).
  '-ffp-contract=off',
  # Under the default -ftrapping-math a float->int conversion may trap, and without AVX-512's
  # masked instructions GCC then leaves every loop that calls the cells' Exp scalar (on an AVX2
  # machine the cell kernels ran 4x slower). Nothing here reads the floating-point exception
  # flags; the values are the same.
  '-fno-trapping-math',
  '-std=c++17',
  '-fPIC',
)


def _command(cxx: str, include: pathlib.Path, out: pathlib.Path) -> list[str]:
  return [
    cxx,
    *COMPILE_FLAGS,
    '-shared',
    '-isystem',
    str(include),
    *map(str, SOURCES),
    '-o',
    str(out),
  ]


def library_path(cxx: str, include: pathlib.Path) -> pathlib.Path:
  """Where the library for this source, jaxlib, compiler and CPU is cached."""
  key = hashlib.sha256()
  for source in sorted(CSRC.glob('*.[ch]*')):
    key.update(source.name.encode() + source.read_bytes())
  key.update(jax.lib.__version__.encode() if hasattr(jax.lib, '__version__') else b'')
  key.update(jax.__version__.encode())
  key.update(' '.join(_command(cxx, include, pathlib.Path('out'))).encode())
  key.update(_cpu_flags().encode())
  return cache_dir() / f'kernels-{key.hexdigest()[:16]}.so'


def build(force: bool = False) -> pathlib.Path:
  """Compiles the kernel library if it is not cached yet; returns its path.

  Raises:
    RuntimeError: no compiler, no FFI headers, or the compiler failed (with its output).
  """
  cxx = compiler()
  if cxx is None:
    raise RuntimeError('no C++ compiler found (set CXX, or install g++)')
  include = headers_dir()
  if include is None:
    raise RuntimeError('the installed jaxlib ships no XLA FFI headers (jax.ffi.include_dir())')
  path = library_path(cxx, include)
  if path.is_file() and not force:
    return path
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
      raise PermissionError(path.parent)
  except OSError:  # A read-only home: this user's folder in the temp directory instead.
    fallback = pathlib.Path(tempfile.gettempdir()) / f'lnorm-ffi-{os.getuid()}'
    path = fallback / path.name
    if path.is_file() and not force:
      return path
    path.parent.mkdir(parents=True, exist_ok=True)
  # Compile to a temporary name and rename: concurrent builders (pytest -n 2) never load a
  # half-written library.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=path.parent)
  os.close(fd)
  try:
    proc = subprocess.run(
      _command(cxx, include, pathlib.Path(tmp)), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
      raise RuntimeError(f'compiling lnorm/csrc failed:\n{proc.stderr[-4000:]}')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return path


@functools.cache
def _load() -> tuple[bool, str]:
  try:
    path = build()
    lib = ctypes.CDLL(str(path))
    for target, symbol in _HANDLERS:
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform='cpu')
  except Exception as e:  # Any failure: the XLA path, which is always correct.
    reason = f'{type(e).__name__}: {e}'
    log.debug('lnorm CPU kernels unavailable, using the XLA paths: %s', reason)
    return False, reason
  log.debug('lnorm CPU kernels loaded from %s', path)
  return True, str(path)


def usable_here() -> bool:
  """Whether lnorm's CPU kernels run for what is traced now: not switched off, the default
  backend a CPU with one device, and the library built and loaded.

  With several devices (processes) XLA's SPMD partitioner would replicate a custom call
  (gathering its operands onto every device) where it splits XLA's own loops: the kernels
  are for one device. On a GPU/TPU machine no compiler runs.
  """
  if not kernel_enabled() or jax.default_backend() != 'cpu' or jax.device_count() != 1:
    return False
  return layer_norm_kernel()[0]


def layer_norm_kernel() -> tuple[bool, str]:
  """``(available, detail)``: builds (once per process) and registers every kernel.

  ``detail`` is the library's path, or why it is unavailable. Does not look at
  ``$LNORM_LAYER_NORM_KERNEL`` (see :func:`kernel_enabled`).
  """
  return _load()


def main() -> None:
  """``python -m lnorm._ffi``: build the kernels now (``make setup``); never fails."""
  ok, detail = layer_norm_kernel()
  print(f'lnorm CPU kernels: {"built" if ok else "unavailable"} ({detail})')
  sys.exit(0)


if __name__ == '__main__':
  main()
