r"""Runs one experiment: ``python -m lnorm.main --config=CONFIG --workdir=DIR``.

Example, from the repository root::

  python -m lnorm.main --config=configs/pmnist.py:norm=layer,batch_size=4 \
      --workdir=runs/pmnist/layer-bs4 --config.num_epochs=5

``--config`` is a config file with ``get_config(arg)`` and the arg after the
colon; ``--config.a.b=v`` overrides single fields. ``config.experiment``
names the module of :mod:`experiments` whose ``train_and_evaluate(config,
workdir)`` runs. Re-running on the same workdir resumes it.

``experiments/`` and ``configs/`` sit at the repository root and are not
installed; running with ``-m`` from the root puts the root on ``sys.path``,
and this module adds the root of its own checkout when it is missing, so the
command also works from elsewhere (with paths to the config adjusted).

The persistent compilation cache is on (``~/.cache/lnorm/jax``); set
``LNORM_JAX_CACHE`` to another directory, or to ``off``.

The allocator: glibc's malloc gives XLA:CPU fresh pages for each large buffer,
and the page faults slow large element-wise ops several times over;
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge pages for malloc)
avoids most of them. glibc reads the setting only when a process starts, so
when it is missing from ``GLIBC_TUNABLES`` this command re-executes itself
once, before importing anything heavy, with it added (``os.execve``: same
process id, same arguments). ``LNORM_ALLOCATOR=default`` turns this off.
"""

import os
import sys

HUGETLB_TUNABLE = 'glibc.malloc.hugetlb=1'


def _reexec_with_hugetlb() -> None:
  """Re-executes this process with ``glibc.malloc.hugetlb=1`` in ``GLIBC_TUNABLES`` if absent."""
  if os.environ.get('LNORM_ALLOCATOR', '') == 'default' or not sys.platform.startswith('linux'):
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return  # Set by the user or by an earlier exec of this command: never loops.
  env = dict(
    os.environ, GLIBC_TUNABLES=f'{tunables}:{HUGETLB_TUNABLE}' if tunables else HUGETLB_TUNABLE
  )
  argv = getattr(sys, 'orig_argv', None) or [sys.executable, *sys.argv]  # Keeps ``-m lnorm.main``.
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)


if __name__ == '__main__':
  _reexec_with_hugetlb()

import logging as std_logging  # noqa: E402 (after the re-exec, which must come first).
import pathlib  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if (_REPO_ROOT / 'experiments' / '__init__.py').exists() and str(_REPO_ROOT) not in sys.path:
  sys.path.append(str(_REPO_ROOT))

import experiments  # noqa: E402 (needs the repository root on sys.path).
from lnorm import training  # noqa: E402
from lnorm.checkpoints import ConfigMismatchError  # noqa: E402

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
    experiment = config.experiment
  except OSError as e:  # config_flags defers a missing or unreadable file to first use.
    _fail(f'cannot load --config: {str(e).strip().splitlines()[-1].strip()}')
  try:
    module = experiments.get_experiment(experiment)
    if hasattr(module, 'check_config'):
      module.check_config(config)  # Overrides are checked too, before any work.
  except ValueError as e:
    _fail(f'bad config: {e}')
  cache = training.enable_compilation_cache()
  logging.info('Compilation cache: %s', cache or 'off')
  logging.info('GLIBC_TUNABLES=%r', os.environ.get('GLIBC_TUNABLES', ''))
  logging.info('Config:\n%s', config)
  try:
    final = module.train_and_evaluate(config, FLAGS.workdir)
  except (ConfigMismatchError, FileNotFoundError) as e:
    _fail(str(e))  # A workdir of another config, or missing data: the message says what to do.
  logging.info('Final: %s', final)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
