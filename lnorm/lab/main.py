r"""The command line: ``python -m lnorm.main --config=CONFIG --workdir=DIR``.

Example, from the repository root::

  python -m lnorm.main --config=configs/pmnist.py:norm=layer,batch_size=4 \
      --workdir=runs/pmnist/layer-bs4 --config.num_epochs=5

``--config`` is a config file with ``get_config(arg)`` and the arg after the
colon; ``--config.a.b=v`` overrides single fields. ``config.experiment``
names the module ``experiments/<experiment>.py``, which the runner
(:func:`lnorm.lab.runner.train_and_evaluate`) trains. Re-running on the same
workdir resumes it. ``experiments/`` and ``configs/`` sit at the repository
root and are not installed: run the command from the root.

The persistent compilation cache is on (``~/.cache/lnorm/jax``); set
``LNORM_JAX_CACHE`` to another directory, or to ``off``. The allocator is set
by :mod:`lnorm.lab.allocator` before this module is imported.

Exit codes: 0 done; 2 a mistake in the command (config, override, workdir,
data; one line on stderr); 3 the run diverged; 4 a checkpoint or file could
not be written, or no checkpoint is intact; 130 / 143 stopped by SIGINT /
SIGTERM after saving a checkpoint (rerun the command to resume).
"""

import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lnorm.lab import distributed, runner
from lnorm.lab.checkpoints import CheckpointError
from lnorm.lab.workdir import ConfigMismatchError, WorkdirError

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and final.json.')
config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file (configs/<task>.py:<args>).', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])
flags.DEFINE_string(
  'coordinator', None, 'HOST:PORT of process 0 in a multi-process run ($LNORM_COORDINATOR); '
  'omit all three on SLURM, Open MPI or a TPU pod: JAX detects them.',
)  # fmt: skip
flags.DEFINE_integer('num_processes', None, 'Processes of the run ($LNORM_NUM_PROCESSES).')
flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes-1 ($LNORM_PROCESS_ID).')
flags.DEFINE_float(
  'peer_timeout_s', distributed.PEER_TIMEOUT_S, 'Stop when another process is silent this long.'
)
flags.DEFINE_integer(
  'init_timeout_s', distributed.INIT_TIMEOUT_S, 'Wait this long at start for all processes.'
)


def _quiet(record: std_logging.LogRecord) -> bool:
  """Drops orbax's INFO lines (about 30 per checkpoint) and JAX's backend probing.

  Warnings still show. JAX logs each accelerator backend it could not start
  ("Unable to initialize backend 'tpu'"), which on a CPU machine is expected.
  """
  if record.levelno >= std_logging.WARNING:
    return True
  if '/orbax/' in record.pathname:
    return False
  return 'xla_bridge' not in record.pathname


def _fail(message: str, code: int = runner.EXIT_USAGE) -> None:
  """One line on stderr, then exit ``code`` (the README's exit codes)."""
  sys.stderr.write(f'lnorm.main: error: {message}\n')
  sys.exit(code)


def _override_error(error: Exception) -> str:
  """``--config.nrom=...`` -> "unknown config field 'nrom'; did you mean 'norm'?"."""
  text = str(error)
  field = re.search(r"'([^'\\]+)", text)
  name = field.group(1) if field else text
  hint = re.search(r'Did you mean "([^"]+)"', text)
  more = f"; did you mean '{hint.group(1)}'?" if hint else '; see the config file for its fields.'
  return f"unknown config field '{name}' (--config.{name}=...){more}"


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the flags; every mistake is one line on stderr and exit 2.

  ``config_flags`` puts the whole traceback of an error raised by
  ``get_config`` into the flag error; the last line is what the user needs.
  An override of a field that does not exist raises deep inside ml_collections.
  """
  try:
    return FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if 'Error whilst parsing config file' in text:
      lines = [line for line in text.strip().splitlines() if line.strip()]
      _fail(f'{lines[0].split(":")[0]}: {lines[-1].strip()}')
    first = text.strip().splitlines()[0] if text.strip() else 'bad flags'
    _fail(f'{first} (see --helpshort).')
  except (AttributeError, KeyError) as e:
    _fail(_override_error(e))
  except (TypeError, ValueError) as e:
    _fail(f'bad --config override: {" ".join(str(e).split())}')
  return []


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])} (flags are --config=... --workdir=...).')
  logging.get_absl_handler().addFilter(_quiet)
  config = FLAGS.config
  try:
    config.experiment  # noqa: B018 (config_flags defers a missing file to first use).
  except OSError as e:
    _fail(f'cannot load --config: {str(e).strip().splitlines()[-1].strip()}')
  try:
    runner.check_config(config)  # Overrides are checked too, before any work.
  except ValueError as e:
    _fail(f'bad config: {e}')
  try:
    distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                           peer_timeout_s=FLAGS.peer_timeout_s,
                           init_timeout_s=FLAGS.init_timeout_s)  # fmt: skip
  except ValueError as e:
    _fail(f'multi-process run: {e}')
  cache = runner.enable_compilation_cache()
  logging.info('Compilation cache: %s; GLIBC_TUNABLES=%r', cache or 'off',
               os.environ.get('GLIBC_TUNABLES', ''))  # fmt: skip
  try:
    final = distributed.guard(runner.train_and_evaluate, config, FLAGS.workdir)
  except runner.Interrupted as e:
    _fail(str(e), e.exit_code)
  except KeyboardInterrupt:
    _fail('interrupted before training started; nothing to save.', 130)
  except (ConfigMismatchError, WorkdirError, FileNotFoundError, ValueError) as e:
    _fail(
      str(e)
    )  # A workdir of another config or in use, missing data: the message says what to do.
  except (CheckpointError, OSError) as e:
    _fail(str(e), runner.EXIT_IO)
  if final.get('diverged'):
    last = final.get('last_checkpoint')
    kept = f'its last good checkpoint is step {last}' if last else 'no checkpoint was written'
    _fail(
      f'the run diverged at step {final.get("diverged_step")} (a non-finite loss, gradient or '
      f'parameter); {kept} in {FLAGS.workdir}. Lower the learning rate, or clip gradients '
      '(grad_clip_norm).',
      runner.EXIT_DIVERGED,
    )
  logging.info('Final: %s', final)


def run() -> None:
  """Parses the command line and runs the experiment."""
  distributed.run_or_exit(app.run, main, flags_parser=parse_flags)
