"""Training across processes and machines with ``jax.distributed``: joining, writing, failing.

JAX runs one process per host (or several on one large host); the processes form
one global device mesh through a coordination service that process 0 hosts.
Every process runs the same program: :mod:`lnorm.lab.sharding` builds the mesh over
``jax.devices()`` (all processes' devices) and feeds each process only its own
rows of the global batch; XLA's collectives (gloo over TCP on CPU, NCCL on GPU,
ICI/DCN on TPU) then average the gradients over the global batch. An experiment
sees none of this.

Joining (:func:`initialize`), in this order:

* explicitly: ``coordinator`` (``HOST:PORT`` where process 0 listens),
  ``num_processes`` and ``process_id``, from ``python -m lnorm.main`` flags or
  the environment (``LNORM_COORDINATOR`` or JAX's ``JAX_COORDINATOR_ADDRESS``,
  ``LNORM_NUM_PROCESSES``, ``LNORM_PROCESS_ID``);
* automatically, with none of them, on a cluster that
  ``jax.distributed.initialize()`` detects by itself (SLURM, Open MPI, Cloud TPU
  pods and GKE TPU slices, Kubernetes jobs) when it runs more than one process;
* otherwise (or with ``num_processes=1``) a single process, as before.

Who writes (:func:`is_primary`): process 0 writes every file of the workdir
(``config.json``, ``metrics.jsonl``, TensorBoard, ``images/``, ``final.json``)
and prints the progress; checkpoints are written by orbax from every process
(each its own shards, replicated arrays once). Files an experiment caches in
the workdir while it is built (skip-thoughts' vocabulary and corpus) are made by
process 0 first: the others build theirs after it (:func:`primary_first`) and
find them there.

Failure: a process that dies takes the run down, boundedly (the timeouts are
arguments of :func:`initialize`):

* A survivor blocked in (or entering) a collective with the dead process gets a
  connection error from gloo at once; :func:`run_or_exit` prints one line
  and exits with :data:`EXIT_PEER_FAILED` (5), skipping JAX's shutdown barrier,
  which would otherwise wait for the dead process.
* A watchdog thread in every process beats into the coordination service's
  key-value store every :data:`BEAT_INTERVAL_S`; a peer silent for
  ``peer_timeout_s`` (default 60 s; hung, stopped, or its host gone without a
  TCP reset), or a coordination service that stops answering, ends this
  process the same way, with one line.
* JAX's own heartbeat timeout is set to twice ``peer_timeout_s`` as a backstop.
  When process 0 itself dies, the coordination service dies with it, and the
  JAX runtime of each survivor usually aborts it within a second on its own
  ("Terminating process because the JAX distributed service detected fatal
  errors ..."; exit status 134) before Python can print anything.
* At start, each process waits at most ``init_timeout_s`` (default 300 s) for
  all the others to join; process 0 waits at most :data:`PREPARE_TIMEOUT_S` for
  the others after building the experiment, and at the end each process waits at most
  :data:`SHUTDOWN_TIMEOUT_S` for the others to finish.

Restarting every process resumes from the last checkpoint, to the numbers of
an uninterrupted run.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax._src import distributed as jax_distributed  # The client: JAX offers no public handle.

ENV_COORDINATOR = 'LNORM_COORDINATOR'
ENV_NUM_PROCESSES = 'LNORM_NUM_PROCESSES'
ENV_PROCESS_ID = 'LNORM_PROCESS_ID'
#: JAX's own variable for the coordinator, read when ``LNORM_COORDINATOR`` is unset.
ENV_JAX_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'

#: Default seconds a peer may stay silent before the others stop.
PEER_TIMEOUT_S = 60.0
#: Default seconds each process waits at start for all the others to join.
INIT_TIMEOUT_S = 300
#: Seconds between two beats of the watchdog.
BEAT_INTERVAL_S = 2.0
#: Seconds the other processes wait for process 0 to build the experiment (data preparation).
PREPARE_TIMEOUT_S = 3600
#: Seconds a finished process waits for the others to finish too.
SHUTDOWN_TIMEOUT_S = 120
#: Seconds a barrier inside the run (reading the workdir) waits.
BARRIER_TIMEOUT_S = 600
#: Exit status of a process that lost contact with another one.
EXIT_PEER_FAILED = 5

_KV_PREFIX = 'lnorm/alive'
_DONE = 'done'
#: Lower-case fragments of the errors a dead or unreachable peer causes (gloo, gRPC, barriers).
_PEER_ERROR_MARKERS = (
  'gloo',
  'connection reset',
  'connection closed',
  'connection refused',
  'socket closed',
  'broken pipe',
  'unavailable',
  'heartbeat',
  'barrier',
  'deadline_exceeded',
  'deadline exceeded',
  'coordination service',
)


class _State:
  """What :func:`initialize` set up (one run per interpreter)."""

  initialized = False
  process_id = 0
  num_processes = 1
  coordinator: str | None = None
  watchdog: _Watchdog | None = None
  barriers = 0


_state = _State()


def detect_cluster() -> str | None:
  """The cluster ``jax.distributed.initialize()`` would detect, if it runs several processes.

  Returns the name of JAX's cluster environment (e.g. ``'SlurmCluster'``,
  ``'GceTpuCluster'``, ``'OmpiCluster'``) when it is present and holds more
  than one process; ``None`` otherwise (no cluster, or a one-process job such as
  a plain ``sbatch`` script or a single-host TPU VM). The list of environments
  is JAX's own (``jax._src.clusters``); if that private module changes, this
  answers ``None`` and the explicit flags still work.
  """
  try:
    from jax._src import clusters

    envs = [e for e in clusters.ClusterEnv._cluster_types if not e.opt_in_only_method]
  except (ImportError, AttributeError):  # pragma: no cover (a JAX without the module).
    return None
  for env in envs:
    try:
      if env.is_env_present() and env.get_process_count() > 1:
        return env.__name__
    except Exception as e:  # noqa: BLE001 (a half-configured environment is not this one).
      logging.debug('cluster %s not usable: %s', env.__name__, e)
  return None


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, '').strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'${name} must be an integer; got {value!r}.') from None


def resolve(
  coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> dict[str, Any] | None:
  """The ``jax.distributed.initialize`` arguments of this process; ``None``: a single process.

  Arguments win over the environment (:data:`ENV_COORDINATOR`,
  :data:`ENV_NUM_PROCESSES`, :data:`ENV_PROCESS_ID`, :data:`ENV_JAX_COORDINATOR`).
  With none of the three, a cluster JAX detects (:func:`detect_cluster`) gives
  ``{}`` (JAX fills everything in). ``num_processes=1`` is a single process.

  Raises:
    ValueError: some but not all three are given outside a detected cluster,
      or they are inconsistent (the message names what to fix).
  """
  coordinator = (
    coordinator or os.environ.get(ENV_COORDINATOR) or os.environ.get(ENV_JAX_COORDINATOR) or None
  )
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if num_processes == 1 and process_id in (None, 0):
    return None
  given = {'coordinator': coordinator, 'num_processes': num_processes, 'process_id': process_id}
  if all(v is None for v in given.values()):
    return {} if detect_cluster() else None
  missing = [k for k, v in given.items() if v is None]
  if missing and not detect_cluster():
    flags = ', '.join(f'--{k}' for k in missing)
    raise ValueError(
      f'a multi-process run needs --coordinator=HOST:PORT, --num_processes and --process_id '
      f'(or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}); {flags} missing.'
    )
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'num_processes must be at least 1; got {num_processes}.')
  if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
    raise ValueError(f'process_id must be in [0, {num_processes}); got {process_id}.')
  if coordinator is not None:
    host, _, port = coordinator.rpartition(':')
    if not host or not port.isdigit():
      raise ValueError(f'coordinator must be HOST:PORT; got {coordinator!r}.')
  return {k: v for k, v in given.items() if v is not None}


def initialize(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  peer_timeout_s: float = PEER_TIMEOUT_S,
  init_timeout_s: int = INIT_TIMEOUT_S,
) -> bool:
  """Joins the multi-process run :func:`resolve` finds; returns whether there is one.

  Must come before anything touches a JAX device. On CPU the collectives use
  gloo (``jax_cpu_collectives_implementation``). Starts the watchdog (see the
  module docstring) and marks this process finished at a normal exit.

  Args:
    coordinator, num_processes, process_id: as for :func:`resolve`.
    peer_timeout_s: seconds another process may go silent before this one stops.
    init_timeout_s: seconds to wait at start for every process to join.

  Raises:
    ValueError: an incomplete or inconsistent multi-process setup.
  """
  args = resolve(coordinator, num_processes, process_id)
  if args is None:
    return False
  if peer_timeout_s <= 0 or init_timeout_s <= 0:
    raise ValueError('peer_timeout_s and init_timeout_s must be positive.')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(
      **{{'coordinator': 'coordinator_address'}.get(k, k): v for k, v in args.items()},
      initialization_timeout=int(init_timeout_s),
      heartbeat_timeout_seconds=max(int(2 * peer_timeout_s), 10),
      shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
    )
  except Exception as e:
    where = args.get('coordinator', 'the detected coordinator')
    raise ValueError(
      f'could not join the run at {where} within {init_timeout_s} s (are all '
      f'processes started, with the same --coordinator and --num_processes?): {_first_line(e)}'
    ) from e
  _state.initialized = True
  _state.process_id, _state.num_processes = jax.process_index(), jax.process_count()
  _state.coordinator = jax_distributed.global_state.coordinator_address
  logging.info(
    'Process %d of %d (coordinator %s): %d local of %d devices.',
    _state.process_id, _state.num_processes, _state.coordinator,
    jax.local_device_count(), jax.device_count(),
  )  # fmt: skip
  if _state.num_processes > 1:
    _state.watchdog = _Watchdog(peer_timeout_s)
    _state.watchdog.start()
    atexit.register(_finish)
  return True


def is_initialized() -> bool:
  """Whether this process joined a multi-process run through :func:`initialize`."""
  return _state.initialized and _state.num_processes > 1


def is_primary() -> bool:
  """Whether this process writes the workdir's files: process 0 (always so with one process)."""
  return jax.process_index() == 0


def _client():
  return jax_distributed.global_state.client


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
  """Waits until every process reaches the barrier ``name`` (nothing with one process).

  All processes must pass the same barriers in the same order; each use gets
  its own id. A dead peer makes the wait fail (an error the caller sees).
  """
  if not is_initialized():
    return
  _state.barriers += 1
  _client().wait_at_barrier(f'lnorm/{name}/{_state.barriers}', int(timeout_s * 1000))


@contextlib.contextmanager
def primary_first(name: str, timeout_s: float = PREPARE_TIMEOUT_S) -> Iterator[None]:
  """Runs the block on process 0 first, then on the others; one process: just runs it.

  For work that may create files in the workdir (config.json, data caches an
  experiment keeps there): process 0 does it and writes them; the others do it
  after and find the files made, so they only read. If the block fails on
  process 0, the others see the barrier fail and stop.
  """
  if not is_initialized():
    yield
  elif is_primary():
    yield
    barrier(name, timeout_s)
  else:
    barrier(name, timeout_s)
    yield


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is true on any process; every process must call it at the same point.

  For decisions all processes must take together, such as stopping after a
  signal only one of them received: a small all-gather (one collective); with
  one process, ``flag`` itself.
  """
  if not is_initialized():
    return bool(flag)
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


class PeerFailure(RuntimeError):
  """Another process of the run died or became unreachable (see :func:`guard`)."""


def guard(fn: Callable[..., Any], *args, **kwargs) -> Any:
  """``fn(*args, **kwargs)``, with an error that says a peer is gone raised as :class:`PeerFailure`.

  Callers that map ordinary errors (``ValueError``, ``OSError``) to messages
  and exit codes then let this one through to :func:`run_or_exit`.
  """
  try:
    return fn(*args, **kwargs)
  except Exception as e:
    if is_initialized() and not isinstance(e, PeerFailure) and is_peer_failure(e):
      raise PeerFailure(_first_line(e)) from e
    raise


def is_peer_failure(error: BaseException) -> bool:
  """Whether ``error`` says another process died or became unreachable (gloo, gRPC, barrier)."""
  if isinstance(error, PeerFailure):
    return True
  text = f'{type(error).__name__}: {error}'.lower()
  return any(marker in text for marker in _PEER_ERROR_MARKERS)


def _exit_now(code: int, line: str | None = None) -> None:
  """Writes ``line``, flushes, and ends the process without JAX's shutdown barrier."""
  if line:
    sys.stderr.write(line.rstrip('\n') + '\n')
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):
      stream.flush()
  with contextlib.suppress(Exception):
    logging.shutdown()
  os._exit(code)


def _peer_failure_line(what: str) -> str:
  me = f'process {_state.process_id} of {_state.num_processes}'
  return (
    f'lnorm.main: error: {me}: lost contact with another process of the run ({what}); '
    f'every process stops: start them all again to resume from the last checkpoint.'
  )


def _first_line(error: BaseException, limit: int = 240) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= limit else text[: limit - 3] + '...'


def run_or_exit(fn: Callable[..., Any], *args, **kwargs) -> Any:
  """Calls ``fn``; in a multi-process run, a failure ends this process at once.

  A process that fails must not wait in JAX's shutdown barrier for peers that
  are themselves waiting for it in a collective (both would hang until the
  timeouts). So, once :func:`initialize` joined a run: an error that says a
  peer is gone prints one line and exits with :data:`EXIT_PEER_FAILED`; any other
  exception prints its traceback and exits with 1; ``sys.exit(code)`` with a
  non-zero code exits with it. A normal return or ``sys.exit(0)`` leaves
  through the shutdown barrier as usual. With one process, nothing changes.
  """
  try:
    return fn(*args, **kwargs)
  except SystemExit as e:
    if not is_initialized() or not e.code:
      raise
    if isinstance(e.code, int):
      _exit_now(e.code)
    _exit_now(1, str(e.code))
  except BaseException as e:
    if not is_initialized():
      raise
    if is_peer_failure(e):
      _exit_now(EXIT_PEER_FAILED, _peer_failure_line(_first_line(e)))
    traceback.print_exc()
    _exit_now(1)


class _Watchdog(threading.Thread):
  """Beats into the coordination service and stops this process when a peer goes silent.

  Every :data:`BEAT_INTERVAL_S` it writes a counter under ``lnorm/alive/<id>``
  and reads all processes' counters in one call; a peer whose counter has not
  moved for ``timeout_s`` (and that has not marked itself done), or a
  coordination service that does not answer, ends this process with one line
  (:data:`EXIT_PEER_FAILED`).
  """

  def __init__(self, timeout_s: float):
    super().__init__(name='lnorm-watchdog', daemon=True)
    self.timeout_s = timeout_s
    self.stopped = threading.Event()
    self.client = _client()
    self.me = _state.process_id
    self.peers = [p for p in range(_state.num_processes) if p != self.me]

  def beat(self, value: str) -> None:
    self.client.key_value_set(f'{_KV_PREFIX}/{self.me}', value, allow_overwrite=True)

  def run(self) -> None:
    start = time.monotonic()
    last = {p: (None, start) for p in self.peers}
    count = 0
    while not self.stopped.wait(BEAT_INTERVAL_S):
      count += 1
      try:
        self.beat(str(count))
        values = {k.rsplit('/', 1)[-1]: v for k, v in self.client.key_value_dir_get(_KV_PREFIX)}
      except Exception as e:  # noqa: BLE001 (any failure of the service is fatal to the run).
        if self.stopped.is_set():
          return
        where = f'the coordination service at {_state.coordinator} does not answer'
        _exit_now(EXIT_PEER_FAILED, _peer_failure_line(f'{where}: {_first_line(e, 160)}'))
      now = time.monotonic()
      for p in self.peers:
        value = values.get(str(p))
        if value == _DONE:
          continue
        if value != last[p][0]:
          last[p] = (value, now)
        elif now - last[p][1] > self.timeout_s:
          silent = f'process {p} has been silent for {now - last[p][1]:.0f} s'
          _exit_now(EXIT_PEER_FAILED, _peer_failure_line(silent))


def _finish() -> None:
  """At a normal exit: tells the peers this process is done, and stops the watchdog."""
  watchdog = _state.watchdog
  if watchdog is None:
    return
  watchdog.stopped.set()
  with contextlib.suppress(Exception):
    watchdog.beat(_DONE)
