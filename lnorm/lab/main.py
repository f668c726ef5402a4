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
"""

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lnorm.lab import runner
from lnorm.lab.workdir import ConfigMismatchError

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and final.json.')
config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file (configs/<task>.py:<args>).', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])


def _quiet_orbax(record: std_logging.LogRecord) -> bool:
  """Drops orbax's INFO lines (about 30 per checkpoint); its warnings still show."""
  return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


class UserError(Exception):
  """A mistake in the command (config, workdir, data): reported in one message, no traceback."""


def _fail(message: str) -> None:
  sys.stderr.write(f'lnorm.main: error: {message}\n')
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the flags; a config that does not parse is reported by its message alone.

  ``config_flags`` puts the whole traceback of an error raised by
  ``get_config`` into the flag error; the last line is what the user needs.
  """
  try:
    return FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if 'Error whilst parsing config file' in text:
      lines = [line for line in text.strip().splitlines() if line.strip()]
      _fail(f'{lines[0].split(":")[0]}: {lines[-1].strip()}')
    _fail(f'{text}\nPass --helpshort or --helpfull to see help on flags.')
  return []


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_quiet_orbax)
  config = FLAGS.config
  try:
    config.experiment  # noqa: B018 (config_flags defers a missing file to first use).
  except OSError as e:
    _fail(f'cannot load --config: {str(e).strip().splitlines()[-1].strip()}')
  try:
    runner.check_config(config)  # Overrides are checked too, before any work.
  except ValueError as e:
    _fail(f'bad config: {e}')
  cache = runner.enable_compilation_cache()
  logging.info('Compilation cache: %s', cache or 'off')
  logging.info('GLIBC_TUNABLES=%r', os.environ.get('GLIBC_TUNABLES', ''))
  logging.info('Config:\n%s', config)
  try:
    final = runner.train_and_evaluate(config, FLAGS.workdir)
  except (ConfigMismatchError, FileNotFoundError) as e:
    _fail(str(e))  # A workdir of another config, or missing data: the message says what to do.
  logging.info('Final: %s', final)


def run() -> None:
  """Parses the command line and runs the experiment."""
  app.run(main, flags_parser=parse_flags)
