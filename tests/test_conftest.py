"""The test set-up itself: a wrong LNORM_DATA_DIR fails loudly instead of falling back."""

import conftest
import pytest


def test_a_missing_lnorm_data_dir_fails_instead_of_falling_back(tmp_path, monkeypatch):
  monkeypatch.setenv('LNORM_DATA_DIR', str(tmp_path / 'missing'))
  with pytest.raises(pytest.fail.Exception, match='is not a directory'):
    conftest.real_data_dir()
  monkeypatch.setenv('LNORM_DATA_DIR', str(tmp_path))
  assert conftest.real_data_dir() == tmp_path
