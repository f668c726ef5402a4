r"""Runs every config of a config file's ``get_sweep()``, one workdir each, skipping finished runs.

Usage, from the repository root::

  python scripts/sweep.py --config=configs/pmnist.py --root=runs/pmnist --parallel=2
  python scripts/sweep.py --config=configs/pmnist.py:data=embedded,epochs=3,seeds=1 \
      --root=runs/pmnist-embedded --config.learning_rate=3e-4 --dry_run

``--config=FILE[:ARG]`` calls ``get_sweep(ARG)`` of FILE (``get_sweep()``
without an ARG). Each entry is a config arg string (``'norm=layer,batch_size=4'``)
or a dict of ``get_config`` args (``{'norm': 'layer', 'batch_size': 4}``, joined
into ``'norm=layer,batch_size=4'``). Each becomes one subprocess::

  python -m lnorm.main --config=FILE:ARG --workdir=ROOT/NAME [--config.x=y ...]

with NAME derived from the arg (``norm=layer,batch_size=4`` ->
``norm-layer_batch_size-4``) and every ``--config.x=y`` given here passed on.

- A workdir with ``final.json`` is finished and skipped (``--rerun_finished``
  runs it anyway, e.g. after raising the number of epochs; ``lnorm.main``
  then goes on from its last checkpoint). A workdir without it is resumed:
  ``lnorm.main`` continues from its last checkpoint.
- ``--parallel=N`` runs N at a time; each run's output then goes to
  ``WORKDIR/sweep.log`` (appended) instead of the terminal. Runs share the
  CPU cores: N > 1 pays only where there are cores (or accelerators) to spare.
- ``--filter=REGEX`` keeps the runs whose name matches.
- ``--dry_run`` prints each run's status (new / resume / done) and command.

The exit status is 1 when a run failed; the other runs still run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib.util
import pathlib
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from lnorm.lab import cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FINAL_FILE = 'final.json'
LOG_FILE = 'sweep.log'


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its config arg, its workdir name, and its workdir."""

  arg: str
  name: str
  workdir: pathlib.Path

  @property
  def status(self) -> str:
    """'done' (has final.json), 'resume' (workdir exists) or 'new'."""
    if (self.workdir / FINAL_FILE).is_file():
      return 'done'
    return 'resume' if self.workdir.exists() else 'new'


def entry_to_arg(entry: str | dict[str, Any]) -> str:
  """A ``get_sweep()`` entry as a config arg string (dicts joined as ``k=v,...``)."""
  if isinstance(entry, str):
    return entry
  if isinstance(entry, dict):
    return ','.join(f'{k}={v}' for k, v in entry.items())
  raise TypeError(f'a sweep entry must be a str or a dict, not {type(entry).__name__}: {entry!r}')


def arg_to_name(arg: str) -> str:
  """A workdir name for a config arg, e.g. ``'norm=layer,bs=4'`` -> ``'norm-layer_bs-4'``.

  ``=`` becomes ``-``, ``,`` becomes ``_``, and any character other than
  letters, digits, ``.``, ``-`` and ``_`` becomes ``-``; an empty arg is ``'default'``.
  """
  name = arg.strip().replace('=', '-').replace(',', '_')
  name = re.sub(r'[^A-Za-z0-9._-]', '-', name)
  return name or 'default'


def load_sweep(config_spec: str) -> tuple[str, list[str]]:
  """Imports FILE of ``'FILE[:ARG]'``; returns ``(FILE, [config args of get_sweep(ARG)])``."""
  config_file, _, sweep_arg = config_spec.partition(':')
  path = pathlib.Path(config_file)
  if not path.is_file():
    raise FileNotFoundError(f'config file {config_file} not found.')
  spec = importlib.util.spec_from_file_location(f'_sweep_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # Dataclasses and pickling look the module up there.
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise AttributeError(f'{config_file} has no get_sweep().')
  entries = module.get_sweep(sweep_arg) if sweep_arg else module.get_sweep()
  return config_file, [entry_to_arg(e) for e in entries]


def plan_runs(
  args: Sequence[str], root: str | pathlib.Path, pattern: str | None = None
) -> list[Run]:
  """One :class:`Run` per config arg, under ``root``, optionally only names matching ``pattern``.

  Raises:
    ValueError: two args give the same workdir name.
  """
  runs, seen = [], {}
  for arg in args:
    name = arg_to_name(arg)
    if name in seen:
      raise ValueError(f'sweep args {seen[name]!r} and {arg!r} give the same workdir name {name}.')
    seen[name] = arg
    if pattern is None or re.search(pattern, name):
      runs.append(Run(arg, name, pathlib.Path(root) / name))
  return runs


def build_command(
  config_file: str, run: Run, overrides: Sequence[str] = (), python: str = sys.executable
) -> list[str]:
  """The ``python -m lnorm.main`` command line of one run."""
  return [
    python,
    '-m',
    'lnorm.main',
    f'--config={config_file}:{run.arg}',
    f'--workdir={run.workdir}',
    *overrides,
  ]


#: What an exit code of ``python -m lnorm.main`` means (its README section "Exit codes").
OUTCOMES = {0: 'ok', 2: 'FAILED (bad command)', 3: 'FAILED (diverged)', 4: 'FAILED (files)'}


def outcome(rc: int) -> str:
  """``'ok'``, or ``'FAILED (...)'`` saying what the run's exit code means."""
  if rc in OUTCOMES:
    return OUTCOMES[rc]
  if rc in (130, 143, -2, -15):
    return f'FAILED (interrupted, rc={rc})'
  return f'FAILED (rc={rc})'


def run_sweep(
  runs: Sequence[Run],
  command_fn: Callable[[Run], list[str]],
  parallel: int = 1,
  log_to_files: bool | None = None,
  rerun_finished: bool = False,
  dry_run: bool = False,
  echo: Callable[[str], None] = print,
) -> dict[str, int | None]:
  """Runs ``command_fn(run)`` for each run that is not done, ``parallel`` at a time.

  Args:
    runs: the runs, in order.
    command_fn: a run's command line.
    parallel: how many subprocesses at once.
    log_to_files: send each run's output to ``WORKDIR/sweep.log`` (default:
      when ``parallel > 1``).
    rerun_finished: also run the workdirs that have ``final.json``.
    dry_run: only print each run's status and command.
    echo: where progress lines go.

  Returns:
    ``{name: return code}``; ``None`` for runs skipped as done (and for every
    run of a dry run).
  """
  if parallel < 1:
    raise ValueError(f'parallel must be at least 1; got {parallel}.')
  log_to_files = parallel > 1 if log_to_files is None else log_to_files
  results: dict[str, int | None] = {}
  todo = []
  for run in runs:
    status = run.status
    skip = status == 'done' and not rerun_finished
    if dry_run:
      what = 'skip (done)' if skip else status
      echo(f'{what:12s} {run.name}: {shlex.join(command_fn(run))}')
      results[run.name] = None
    elif skip:
      echo(f'skip   {run.name} (finished: {run.workdir / FINAL_FILE})')
      results[run.name] = None
    else:
      todo.append(run)
  if dry_run or not todo:
    return results

  def execute(i: int, run: Run) -> int:
    cmd = command_fn(run)
    echo(f'[{i + 1}/{len(todo)}] {run.status} {run.name}: {shlex.join(cmd)}')
    run.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if log_to_files:
      with open(run.workdir / LOG_FILE, 'ab') as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    else:
      rc = subprocess.run(cmd, check=False).returncode
    where = f'; log: {run.workdir / LOG_FILE}' if log_to_files and rc else ''
    echo(f'[{i + 1}/{len(todo)}] {outcome(rc)} {run.name} in {time.monotonic() - t0:.0f} s{where}')
    return rc

  with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
    futures = {pool.submit(execute, i, run): run for i, run in enumerate(todo)}
    for future in concurrent.futures.as_completed(futures):
      results[futures[future].name] = future.result()
  return {run.name: results[run.name] for run in runs}


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """The sweep's own flags, and the ``--config.x=y`` overrides to pass on."""
  parser = cli.ArgumentParser(
    description=__doc__.split('\n')[0],
    allow_abbrev=False,
    formatter_class=argparse.RawTextHelpFormatter,
  )
  parser.add_argument('--config', required=True, help='FILE[:ARG]: calls get_sweep(ARG) of FILE.')
  parser.add_argument('--root', required=True, help='parent directory of the workdirs.')
  parser.add_argument('--parallel', type=int, default=1, help='runs at a time (default 1).')
  parser.add_argument('--filter', default=None, help='only runs whose workdir name matches.')
  parser.add_argument('--dry_run', action='store_true', help='print the runs; run nothing.')
  parser.add_argument('--rerun_finished', action='store_true', help='also run finished workdirs.')
  parser.add_argument('--log_to_files', action='store_true', help='WORKDIR/sweep.log also at N=1.')
  parser.add_argument('--python', default=sys.executable, help='interpreter of the runs.')
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith('--config.')]
  if bad:
    parser.error(f'unrecognized arguments: {" ".join(bad)} (only --config.x=y are passed on)')
  return args, rest


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    config_file, sweep_args = load_sweep(args.config)
    runs = plan_runs(sweep_args, args.root, args.filter)
  except (OSError, ValueError, TypeError) as e:  # A missing file or a bad sweep arg: one line.
    print(f'sweep.py: error: {e}', file=sys.stderr)
    return 2
  if not runs:
    print(f'no runs: get_sweep gave {len(sweep_args)} configs, none matching --filter.')
    return 1
  counts = {s: sum(r.status == s for r in runs) for s in ('new', 'resume', 'done')}
  print(f'{len(runs)} runs under {args.root}: ' + ', '.join(f'{n} {s}' for s, n in counts.items()))
  results = run_sweep(
    runs,
    lambda run: build_command(config_file, run, overrides, args.python),
    parallel=args.parallel,
    log_to_files=True if args.log_to_files else None,
    rerun_finished=args.rerun_finished,
    dry_run=args.dry_run,
  )
  failed = [f'{name} ({outcome(rc)[8:-1]})' for name, rc in results.items() if rc]
  if failed:
    print(f'{len(failed)} of {len(results)} runs failed: {", ".join(failed)}')
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
