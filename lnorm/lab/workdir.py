"""The run directory's files, their names, and JSON reading and writing: one place.

Layout of a workdir::

  config.json      the config of the run (written before training starts)
  metrics.jsonl    one row per logged step (:mod:`lnorm.lab.metrics`)
  tb/              TensorBoard event files
  images/          summary images and texts of evaluators
  checkpoints/<step>/{state,meta}   the last few checkpoints (:mod:`lnorm.lab.checkpoints`)
  final.json       written last: final metrics, or ``diverged: true``

Re-running on a workdir resumes from its last checkpoint. The new config must
equal the saved one except for the fields a caller declares resume-safe
(those that change neither the data order nor the updates, e.g. how often to
log); otherwise :func:`check_or_write_config` refuses, naming each field.

Data sets are found by :func:`find_data_dir`: the config's field, then
``$LNORM_DATA_DIR/<name>``, then ``../shared/data/<name>`` next to the
repository, the same inside and outside ``make``.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import ml_collections

METRICS_FILE = 'metrics.jsonl'
TB_DIR = 'tb'
SUMMARY_DIR = 'images'
CONFIG_FILE = 'config.json'
FINAL_FILE = 'final.json'
CHECKPOINT_DIR = 'checkpoints'


class ConfigMismatchError(ValueError):
  """The config differs from the one saved in the workdir in fields that are not resume-safe."""


def config_to_dict(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """The config as plain JSON data (tuples become lists), as it is saved in config.json."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort(sort_keys=True))
  return json.loads(json.dumps(config, sort_keys=True, default=str))


def _flatten(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def diff_configs(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """The dotted field names whose values differ, mapped to ``(saved, current)``.

  A field present on one side only differs with ``'<absent>'`` on the other.
  """
  a, b = _flatten(saved), _flatten(current)
  absent = '<absent>'
  return {
    k: (a.get(k, absent), b.get(k, absent))
    for k in sorted(set(a) | set(b))
    if a.get(k, absent) != b.get(k, absent)
  }


def check_or_write_config(
  workdir: str | os.PathLike,
  config: ml_collections.ConfigDict | dict,
  resume_safe: Iterable[str] = (),
) -> dict[str, tuple[Any, Any]]:
  """Writes ``config.json``, or checks ``config`` against the one already in ``workdir``.

  Args:
    workdir: the run directory (created if needed).
    config: the config of this run.
    resume_safe: dotted field names that may differ from the saved config;
      the saved file is then updated to the new values.

  Returns:
    The resume-safe differences, ``{field: (saved, current)}``.

  Raises:
    ConfigMismatchError: other fields differ; the message names each one with
      both values.
  """
  path = pathlib.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  current = config_to_dict(config)
  changed = {}
  if path.exists():
    saved = json.loads(path.read_text())
    changed = diff_configs(saved, current)
    unsafe = {k: v for k, v in changed.items() if k not in set(resume_safe)}
    if unsafe:
      lines = '\n'.join(f'  {k}: saved {a!r}, now {b!r}' for k, (a, b) in unsafe.items())
      raise ConfigMismatchError(
        f'{path.parent} holds a run with a different config; the fields that differ are:\n'
        f'{lines}\nUse a new --workdir, or delete this one to start over.'
      )
    if not changed:
      return {}
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + '\n')
  os.replace(tmp, path)
  return changed


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
  """The JSON object in ``path``, or ``None`` if the file does not exist."""
  path = pathlib.Path(path)
  return json.loads(path.read_text()) if path.exists() else None


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
  """Writes ``data`` to ``path`` atomically (a reader never sees half a file)."""
  path = pathlib.Path(path)
  tmp = path.with_suffix(path.suffix + '.tmp')
  tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + '\n')
  os.replace(tmp, path)


#: The repository's checkout (``lnorm/lab/workdir.py`` is three levels down).
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def data_roots() -> list[pathlib.Path]:
  """Where data sets are looked for: ``$LNORM_DATA_DIR``, then ``../shared/data`` by the repo."""
  roots = []
  if os.environ.get('LNORM_DATA_DIR'):
    roots.append(pathlib.Path(os.environ['LNORM_DATA_DIR']).expanduser())
  roots.append(REPO_ROOT.parent / 'shared' / 'data')
  return roots


def find_data_dir(name: str, configured: str | os.PathLike | None = None) -> str | None:
  """The directory of data set ``name``: ``configured`` if given, else the first of
  :func:`data_roots` holding ``name``, else ``None``."""
  if configured:
    return str(pathlib.Path(configured).expanduser())
  for root in data_roots():
    if (root / name).is_dir():
      return str(root / name)
  return None


class WorkdirError(ValueError):
  """The workdir cannot be used: a file, not creatable, or in use by another run."""


LOCK_FILE = 'lock'


def prepare_workdir(workdir: str | os.PathLike) -> pathlib.Path:
  """Creates ``workdir`` if needed; a :class:`WorkdirError` in one line if it cannot be used."""
  path = pathlib.Path(workdir).expanduser()
  if path.exists() and not path.is_dir():
    raise WorkdirError(f'--workdir {workdir} is a file, not a directory: choose another path.')
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / '.write-test'
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    why = e.strerror or type(e).__name__
    raise WorkdirError(
      f'cannot use --workdir {workdir}: {why}; choose a writable directory.'
    ) from None
  return path


class WorkdirLock:
  """An exclusive lock on a workdir for the length of a run (``<workdir>/lock``).

  The lock is an ``fcntl.flock`` on the file, which the kernel drops when the
  process ends in any way: a lock file left by a killed run is stale and is
  taken over (with a log line); a live one makes :meth:`acquire` raise a
  :class:`WorkdirError` naming the process that holds it. The file holds that
  process's id, host and start time.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._file = None

  def acquire(self) -> WorkdirLock:
    import fcntl
    import socket
    import time

    f = open(self.path, 'a+')  # noqa: SIM115 (held until release()).
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      f.close()
      raise WorkdirError(
        f'{self.path.parent} is in use by {holder}: wait for that run to end or stop it; '
        'two runs must not share a workdir.'
      ) from None
    f.seek(0)
    stale = f.read().strip()
    if stale:
      logging.info('Took over the stale lock of %s (that process has ended).', stale)
    f.seek(0)
    f.truncate()
    f.write(f'process {os.getpid()} on {socket.gethostname()} since {time.strftime("%F %T")}\n')
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()
      self._file.close()  # Closing drops the flock.
      self._file = None

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
