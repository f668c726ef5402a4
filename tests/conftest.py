"""Shared test set-up: fast compiles, the real-data directory, and a clean temp folder."""

import os
import pathlib
import shutil
import tempfile

import jax
import pytest

# Tests check numbers, not speed: most XLA optimizations only cost compile time here. The
# exactness tests that must hold under the optimizing compiler too use `optimized`.
jax.config.update('jax_disable_most_optimizations', True)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_SESSION_TMP = None


def pytest_configure(config):
  """Everything a test run writes to the temp folder (tfds leaves ``tmp*tfds`` folders) goes
  into one folder of this process, removed at the end."""
  global _SESSION_TMP
  _SESSION_TMP = tempfile.mkdtemp(prefix='lnorm-tests-')
  os.environ['TMPDIR'] = _SESSION_TMP
  tempfile.tempdir = _SESSION_TMP


def pytest_unconfigure(config):
  if _SESSION_TMP:
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def real_data_dir() -> pathlib.Path | None:
  """``$LNORM_DATA_DIR``, else ``../shared/data`` next to the repository, if it exists.

  A ``$LNORM_DATA_DIR`` that names a missing directory is an error, not a fallback: the
  real-data tests fail saying so, rather than silently reading other data or skipping.
  """
  env = os.environ.get('LNORM_DATA_DIR')
  if env:
    if not pathlib.Path(env).is_dir():
      pytest.fail(f'LNORM_DATA_DIR={env} is not a directory: fix it, or unset it.')
    return pathlib.Path(env)
  default = REPO_ROOT.parent / 'shared' / 'data'
  return default if default.is_dir() else None


@pytest.fixture
def shared_data():
  """The real data sets (../shared/data); the test is skipped where they are absent."""
  path = real_data_dir()
  if path is None:
    pytest.skip('real data not found: set LNORM_DATA_DIR or provide ../shared/data')
  return path


@pytest.fixture
def optimized():
  """Runs the test with XLA's optimizations on: the numerics users get."""
  jax.config.update('jax_disable_most_optimizations', False)
  jax.clear_caches()
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', True)
    jax.clear_caches()
