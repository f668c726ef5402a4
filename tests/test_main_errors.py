"""Mistakes on the command line are one clear message and exit status 2, never a traceback."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT


def _run(*args, cwd=REPO_ROOT):
  env = dict(os.environ, LNORM_JAX_CACHE='off', LNORM_ALLOCATOR='default')
  return subprocess.run(
    [sys.executable, '-m', 'lnorm.main', *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


@pytest.mark.parametrize(
  'args,message',
  [
    (['--config=configs/pmnist.py:norm=grup'], "unknown norm 'grup'; valid names are: none"),
    (['--config=configs/pmnist.py:colour=red'], "unknown config arg 'colour'; allowed args"),
    (
      ['--config=configs/pmnist.py:smoke', '--config.norm=grup'],
      "bad config: unknown norm 'grup'",
    ),
    (['--config=configs/nothere.py'], 'cannot load --config: .*No such file'),
    (['--config=configs/pmnist.py:smoke,data=idx,data_dir=/nonexistent'], 'MNIST files missing'),
  ],
)
def test_bad_command_is_one_clear_message(tmp_path, args, message):
  result = _run(*args, f'--workdir={tmp_path / "run"}')
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  assert 'lnorm.main: error:' in result.stderr
  assert re.search(message, result.stderr), result.stderr
