r"""Starts N processes of one command on this machine as one multi-process JAX run.

For testing the multi-process code path on one machine (127.0.0.1), and for
using several processes on one large machine (one per socket or GPU)::

  python scripts/launch_local.py --num_processes=2 -- \
      python -m lnorm.main --config=configs/pmnist.py:smoke --workdir=runs/mp

Each process gets ``LNORM_COORDINATOR=127.0.0.1:<free port>``,
``LNORM_NUM_PROCESSES=N`` and ``LNORM_PROCESS_ID=i`` (what ``lnorm.main``'s
``--coordinator/--num_processes/--process_id`` read when not given); with
``--devices_per_process`` it also sees that many CPU devices
(``JAX_NUM_CPU_DEVICES``, ``JAX_PLATFORMS=cpu``), and with
``--cpus_per_process=K`` it is pinned to its own K cores (process ``i`` to
cores ``i*K .. i*K+K-1``), so that N processes do not fight over the same ones.
Their output is interleaved here, each line prefixed with ``[i]`` (or written to
``<log_dir>/process-<i>.log``).

When a process exits with an error, the others are given ``--grace_s`` seconds
to stop by themselves (they do: see :mod:`lnorm.lab.distributed`), then killed.
Ctrl-C or SIGTERM is passed on to every process. The exit status is 0 if all
processes succeeded, else the status of the first one that failed (a process
killed by signal N counts as 128 + N).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence


def free_port(host: str = '127.0.0.1') -> int:
  """A TCP port nobody listens on right now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def process_env(
  i: int,
  num_processes: int,
  coordinator: str,
  devices_per_process: int | None = None,
  base: dict[str, str] | None = None,
) -> dict[str, str]:
  """The environment of process ``i``: the run's coordinates, and its CPU devices if asked."""
  env = dict(os.environ if base is None else base)
  env.update(
    LNORM_COORDINATOR=coordinator,
    LNORM_NUM_PROCESSES=str(num_processes),
    LNORM_PROCESS_ID=str(i),
    PYTHONUNBUFFERED='1',
  )
  if devices_per_process:
    env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(devices_per_process))
  return env


def cpu_set(i: int, cpus_per_process: int) -> set[int]:
  """The cores of process ``i``: ``i*K .. i*K+K-1``, wrapped around the cores this may use."""
  cores = sorted(os.sched_getaffinity(0))
  return {cores[(i * cpus_per_process + j) % len(cores)] for j in range(cpus_per_process)}


def describe(returncode: int) -> str:
  """``'exit 5'`` or ``'killed by SIGKILL'``."""
  if returncode < 0:
    try:
      return f'killed by {signal.Signals(-returncode).name}'
    except ValueError:
      return f'killed by signal {-returncode}'
  return f'exit {returncode}'


def _pump(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, b''):
    out.write(prefix + line.decode(errors='replace'))
    out.flush()
  stream.close()


def launch(
  command: Sequence[str],
  num_processes: int,
  *,
  port: int = 0,
  devices_per_process: int | None = None,
  cpus_per_process: int | None = None,
  log_dir: str | None = None,
  grace_s: float = 90.0,
  timeout_s: float | None = None,
) -> int:
  """Runs ``command`` as processes ``0 .. num_processes-1``; returns the exit status.

  Args:
    command: the program and its arguments (the same for every process).
    num_processes: how many processes.
    port: the coordinator's port on 127.0.0.1 (0: a free one).
    devices_per_process: CPU devices each process sees (``None``: JAX's default).
    cpus_per_process: pin each process to this many cores of its own (Linux).
    log_dir: write each process's output to ``<log_dir>/process-<i>.log``
      instead of this terminal.
    grace_s: after a process fails, how long the others may take to stop.
    timeout_s: kill everything after this many seconds (``None``: no limit).
  """
  coordinator = f'127.0.0.1:{port or free_port()}'
  procs: list[subprocess.Popen] = []
  pumps: list[threading.Thread] = []
  logs = []
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
  for i in range(num_processes):
    env = process_env(i, num_processes, coordinator, devices_per_process)
    cores = cpu_set(i, cpus_per_process) if cpus_per_process else None
    preexec = (lambda c=cores: os.sched_setaffinity(0, c)) if cores else None
    if log_dir:
      log = open(os.path.join(log_dir, f'process-{i}.log'), 'wb')  # noqa: SIM115
      logs.append(log)
      out = {'stdout': log, 'stderr': subprocess.STDOUT}
    else:
      out = {'stdout': subprocess.PIPE, 'stderr': subprocess.STDOUT}
    proc = subprocess.Popen(list(command), env=env, preexec_fn=preexec, **out)  # noqa: PLW1509
    procs.append(proc)
    if not log_dir:
      pump = threading.Thread(target=_pump, args=(proc.stdout, f'[{i}] ', sys.stdout), daemon=True)
      pump.start()
      pumps.append(pump)

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  start = time.monotonic()
  first_failure: int | None = None
  failed_at, first_index = None, None
  try:
    while any(p.poll() is None for p in procs):
      for p in procs:
        code = p.poll()
        if code not in (None, 0) and first_failure is None:
          first_failure, failed_at = (128 - code if code < 0 else code), time.monotonic()
          first_index = procs.index(p)
      now = time.monotonic()
      late = failed_at is not None and now - failed_at > grace_s
      if late or (timeout_s is not None and now - start > timeout_s):
        for p in procs:
          if p.poll() is None:
            p.kill()
        if first_failure is None:
          first_failure = 124  # Timed out, as timeout(1) says.
      time.sleep(0.1)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
    for pump in pumps:
      pump.join(timeout=5)
    for log in logs:
      log.close()
    for s, handler in previous.items():
      signal.signal(s, handler)
  if first_failure is None:
    codes = [128 - p.returncode if p.returncode < 0 else p.returncode for p in procs]
    first_index = next((i for i, c in enumerate(codes) if c), None)
    first_failure = codes[first_index] if first_index is not None else 0
  if first_failure:
    statuses = ', '.join(f'{i}: {describe(p.returncode)}' for i, p in enumerate(procs))
    first = f'process {first_index} failed first; ' if first_index is not None else ''
    sys.stderr.write(f'launch_local: {first}processes {statuses}.\n')
  return first_failure


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split('\n\n')[0], usage='%(prog)s [options] -- command ...'
  )
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--port', type=int, default=0, help='coordinator port (0: a free one)')
  parser.add_argument('--devices_per_process', type=int, default=None)
  parser.add_argument('--cpus_per_process', type=int, default=None)
  parser.add_argument('--log_dir', default=None)
  parser.add_argument('--grace_s', type=float, default=90.0)
  parser.add_argument('--timeout_s', type=float, default=None)
  parser.add_argument('command', nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('no command: put it after --, e.g. -- python -m lnorm.main --config=...')
  if args.num_processes < 1:
    parser.error('--num_processes must be at least 1.')
  return launch(
    command,
    args.num_processes,
    port=args.port,
    devices_per_process=args.devices_per_process,
    cpus_per_process=args.cpus_per_process,
    log_dir=args.log_dir,
    grace_s=args.grace_s,
    timeout_s=args.timeout_s,
  )


if __name__ == '__main__':
  sys.exit(main())
