"""Binarized MNIST: the .amat reader, checksums, the tfds builder (no TensorFlow), the stand-in.

The reader and builder are tested on small files the tests write in exactly the format of
Larochelle and Murray's files; the real files (``../shared/data/binarized_mnist``) are
checked against the pinned sha256 where they exist.
"""

import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lnorm.lab.data import binarized_mnist as bm
from lnorm.lab.data import file_sha256

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = {'train': 5, 'valid': 3, 'test': 2}


def amat_text(images: np.ndarray) -> bytes:
  """The exact layout of the real files: 784 values joined by single spaces, then ``\\n``."""
  return b''.join((' '.join(str(int(v)) for v in row) + '\n').encode() for row in images)


def write_files(directory: pathlib.Path, seed: int = 0) -> dict[str, np.ndarray]:
  """Small train/valid/test ``.amat`` files; returns their images."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in SIZES.items():
    out[split] = (rng.uniform(size=(n, 784)) < 0.3).astype(np.uint8)
    (directory / bm.FILES[split][0]).write_bytes(amat_text(out[split]))
  return out


def checksums_of(directory: pathlib.Path) -> dict[str, tuple[int, str]]:
  return {
    name: ((directory / name).stat().st_size, file_sha256(directory / name))
    for name, *_ in bm.FILES.values()
  }


def test_parse_amat_reads_the_exact_layout_and_other_whitespace():
  images = (np.random.default_rng(1).uniform(size=(4, 784)) < 0.5).astype(np.uint8)
  raw = amat_text(images)
  assert len(raw) == 4 * 1568  # The real files' line length.
  np.testing.assert_array_equal(bm.parse_amat(raw), images)
  assert bm.parse_amat(raw).dtype == np.uint8
  # CRLF, tabs, double spaces and no final newline go through the general parser.
  other = raw.replace(b'\n', b'\r\n').replace(b' ', b'\t', 5).replace(b' ', b'  ', 3).rstrip()
  np.testing.assert_array_equal(bm.parse_amat(other), images)


@pytest.mark.parametrize(
  'text, match',
  [
    (b'', 'empty file'),
    (b'0 1 0\n', 'line 1 has 3 values'),
    (amat_text(np.zeros((2, 784), np.uint8)).replace(b'0', b'2', 1), "line 1 holds '2'"),
    (amat_text(np.zeros((3, 784), np.uint8))[:-4] + b'\n', 'line 3 has 782 values'),
  ],
)
def test_malformed_amat_fails_naming_the_line(text, match):
  with pytest.raises(ValueError, match=match):
    bm.parse_amat(text, 'f.amat')


def test_missing_and_damaged_files_fail_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match='binarized_mnist_train.amat, binarized_mnist_valid'):
    bm.check_files(tmp_path)
  write_files(tmp_path)
  sums = checksums_of(tmp_path)
  assert set(bm.check_files(tmp_path, sums)) == {'train', 'valid', 'test'}
  # The pinned checksums of the real files reject these small ones by size first.
  with pytest.raises(bm.DamagedFileError, match=r'bytes, expected 78400000'):
    bm.check_files(tmp_path)
  # One flipped pixel: same size, another sha256.
  path = tmp_path / 'binarized_mnist_valid.amat'
  raw = bytearray(path.read_bytes())
  raw[0] = ord('1') if raw[0] == ord('0') else ord('0')
  path.write_bytes(bytes(raw))
  with pytest.raises(bm.DamagedFileError, match='binarized_mnist_valid.amat is damaged: sha256'):
    bm.check_files(tmp_path, sums)
  (tmp_path / 'binarized_mnist_test.amat').unlink()
  with pytest.raises(FileNotFoundError, match='binarized_mnist_test.amat missing'):
    bm.load_amat_dir(tmp_path, sums)


def test_load_amat_dir_in_file_order(tmp_path):
  images = write_files(tmp_path)
  out = bm.load_amat_dir(tmp_path, checksums_of(tmp_path))
  for split in SIZES:
    np.testing.assert_array_equal(out[split], images[split])


def test_unknown_source_and_missing_dir():
  with pytest.raises(ValueError, match='allowed sources are: tfds, amat, embedded'):
    bm.load_binarized_mnist('png')
  with pytest.raises(FileNotFoundError, match='no data_dir'):
    bm.load_binarized_mnist('amat', None)


def test_tfds_builder_prepares_without_tensorflow(tmp_path):
  """Prepares and reads the builder in a Python where ``import tensorflow`` fails."""
  manual = tmp_path / 'manual'
  images = write_files(manual)
  np.savez(tmp_path / 'expected.npz', **images)
  sums = checksums_of(manual)
  script = textwrap.dedent(f"""
    import builtins, sys
    real_import = builtins.__import__
    def no_tf(name, *args, **kwargs):
      if name == 'tensorflow' or name.startswith('tensorflow.'):
        raise ImportError('TensorFlow is blocked in this test')
      return real_import(name, *args, **kwargs)
    builtins.__import__ = no_tf
    import numpy as np
    from lnorm.lab.data import binarized_mnist as bm
    out = bm.load_tfds({str(manual)!r}, {str(tmp_path / 'tfds')!r}, {sums!r})
    expected = np.load({str(tmp_path / 'expected.npz')!r})
    for split in ('train', 'valid', 'test'):
      assert out[split].dtype == np.uint8, out[split].dtype
      np.testing.assert_array_equal(out[split], expected[split])
    builder = bm.BinarizedMnist(data_dir={str(tmp_path / 'tfds')!r})
    assert builder.is_prepared()
    assert sorted(builder.info.splits) == ['test', 'train', 'validation'], builder.info.splits
    assert 'tensorflow' not in sys.modules
    print('ok')
  """)
  proc = subprocess.run(
    [sys.executable, '-c', script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0 and 'ok' in proc.stdout, proc.stderr[-3000:]
  # The second load reads the cache, without a manual_dir.
  again = bm.load_tfds(None, tmp_path / 'tfds')
  np.testing.assert_array_equal(again['train'], images['train'])


def test_tfds_builder_rejects_a_damaged_file_before_writing(tmp_path):
  manual = tmp_path / 'manual'
  write_files(manual)
  sums = checksums_of(manual)
  (manual / 'binarized_mnist_train.amat').write_bytes(amat_text(np.ones((5, 784), np.uint8)))
  with pytest.raises(bm.DamagedFileError, match='binarized_mnist_train.amat is damaged'):
    bm.prepare(manual, tmp_path / 'tfds', sums)
  assert not (tmp_path / 'tfds' / bm.TFDS_NAME / bm.TFDS_VERSION).exists()
  with pytest.raises(FileNotFoundError, match='not prepared'):
    bm.load_tfds(None, tmp_path / 'empty')


def test_embedded_stand_in():
  a, b = bm.load_embedded(), bm.load_embedded()
  assert {k: v.shape for k, v in a.items()} == {
    'train': (4000, 784),
    'valid': (500, 784),
    'test': (500, 784),
  }
  for split in a:
    assert a[split].dtype == np.uint8 and set(np.unique(a[split])) == {0, 1}
    np.testing.assert_array_equal(a[split], b[split])
  assert 0.08 < a['train'].mean() < 0.2  # MNIST's ink fraction.


@pytest.mark.real_data
def test_real_files_match_the_pinned_checksums(shared_data):
  directory = shared_data / 'binarized_mnist'
  if not directory.is_dir():
    pytest.skip(f'{directory} not found')
  paths = bm.check_files(directory)  # Sizes and sha256 of all three files.
  valid = bm.read_amat(paths['valid'])
  assert valid.shape == (10_000, 784) and valid.dtype == np.uint8
  assert 0.12 < valid.mean() < 0.14
  # The pinned values are the ones tensorflow_datasets records for its own builder.
  import tensorflow_datasets

  tsv = (
    pathlib.Path(tensorflow_datasets.__file__).parent
    / 'datasets'
    / 'binarized_mnist'
    / 'checksums.tsv'
  )
  if tsv.is_file():
    recorded = {
      line.split('\t')[3].strip(): (int(line.split('\t')[1]), line.split('\t')[2])
      for line in tsv.read_text().splitlines()
      if line.strip()
    }
    assert recorded == bm.CHECKSUMS
