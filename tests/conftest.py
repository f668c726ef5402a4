"""Shared test set-up: fast compiles, and the real-data directory (skip when absent)."""

import os
import pathlib

import jax
import pytest

# Tests check numbers, not speed: most XLA optimizations only cost compile time here.
jax.config.update('jax_disable_most_optimizations', True)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def real_data_dir() -> pathlib.Path | None:
  """``$LNORM_DATA_DIR`` or ``../shared/data`` next to the repository, if it exists."""
  candidates = [os.environ.get('LNORM_DATA_DIR'), REPO_ROOT.parent / 'shared' / 'data']
  for c in candidates:
    if c and pathlib.Path(c).is_dir():
      return pathlib.Path(c)
  return None


@pytest.fixture
def shared_data():
  """The real data sets (../shared/data); the test is skipped where they are absent."""
  path = real_data_dir()
  if path is None:
    pytest.skip('real data not found: set LNORM_DATA_DIR or provide ../shared/data')
  return path
