"""MSCOCO captions with precomputed image features, in the two layouts of the order-embeddings code.

Order embeddings (Vendrov et al., ICLR 2016) and the layer-norm paper's §6.1 read COCO as
one caption file and one feature matrix per split, the five captions of image ``i`` on
lines ``5i .. 5i+4`` (Karpathy's splits; captions already tokenized, so ``str.split()``
gives the words). Two directory layouts are in use:

* ``'order'`` (``ivendrov/order-embedding``, ``data/coco`` from its ``coco.zip``)::

    DIR/train.txt   DIR/val.txt   DIR/test.txt             one caption per line
    DIR/images/<cnn>/{train,val,test}.npy                   float32 [N, 4096]

  with ``<cnn>`` = ``10crop`` (VGG19 fc7, averaged over 10 crops, rows scaled to unit
  norm). The dev split is ``val``.
* ``'vse'`` (``ryankiros/visual-semantic-embedding`` and the LN code built on it)::

    DIR/<name>_{train,dev,test}_caps.txt   DIR/<name>_{train,dev,test}_ims.npy

  with ``<name>`` = ``coco`` (or ``f8k``, ``f30k``).

``layout='auto'`` picks the one that is there (:func:`detect_layout`). Each split is read
as ``{'captions': list[str] (5N), 'images': float32[N, D]}``; the checks (clear errors)
are: every file of the split exists, the feature matrix is 2-d of width ``feature_dim``
(4096 for VGG), and there are exactly ``captions_per_image`` (5) captions per image.
Features are memory-mapped, so the 1.3 GB training matrix is not copied up front.

Lines are stripped of surrounding whitespace, as the original code does; an empty
line is kept as an (empty) caption so the 5-per-image alignment never shifts. Files are
UTF-8 (falling back to latin-1).

:class:`CocoCaptions` is a ``tensorflow_datasets`` builder over the same reader
(``manual_dir`` = ``DIR``): one example per image, ``{'image_features': float32[4096],
'captions': Sequence(Text, 5)}``, splits ``train``/``validation``/``test``.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

LAYOUTS = ('auto', 'order', 'vse')
#: The splits by their name in this project, and the file stems of each layout.
SPLITS = ('train', 'dev', 'test')
ORDER_SPLIT_FILES = {'train': 'train', 'dev': 'val', 'test': 'test'}
CAPTIONS_PER_IMAGE = 5
FEATURE_DIM = 4096


def split_files(
  data_dir: str | os.PathLike, split: str, layout: str, cnn: str = '10crop', name: str = 'coco'
) -> tuple[pathlib.Path, pathlib.Path]:
  """``(captions file, features file)`` of ``split`` (``train``/``dev``/``test``) in ``layout``."""
  if split not in SPLITS:
    raise ValueError(f'unknown COCO split {split!r}; the splits are {", ".join(SPLITS)}.')
  root = pathlib.Path(data_dir).expanduser()
  if layout == 'order':
    stem = ORDER_SPLIT_FILES[split]
    return root / f'{stem}.txt', root / 'images' / cnn / f'{stem}.npy'
  if layout == 'vse':
    return root / f'{name}_{split}_caps.txt', root / f'{name}_{split}_ims.npy'
  raise ValueError(f'unknown COCO layout {layout!r}; allowed: order, vse (or auto).')


def detect_layout(data_dir: str | os.PathLike, cnn: str = '10crop', name: str = 'coco') -> str:
  """``'order'`` or ``'vse'``: the layout whose training files are in ``data_dir``.

  Raises:
    FileNotFoundError: ``data_dir`` is missing or holds neither layout (the message lists
      the files each layout needs).
  """
  root = pathlib.Path(data_dir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f'COCO directory {str(root)!r} does not exist.')
  found = [
    layout
    for layout in ('order', 'vse')
    if all(p.is_file() for p in split_files(root, 'train', layout, cnn, name))
  ]
  if len(found) == 1:
    return found[0]
  if not found:
    raise FileNotFoundError(
      f'no COCO data in {str(root)!r}: expected train.txt with images/{cnn}/train.npy '
      f'(order-embedding layout) or {name}_train_caps.txt with {name}_train_ims.npy '
      '(visual-semantic-embedding layout); see lnorm/lab/data/coco.py.'
    )
  raise ValueError(
    f'{str(root)!r} holds both COCO layouts (order and vse); choose one with layout=order '
    'or layout=vse.'
  )


def read_captions(path: str | os.PathLike) -> list[str]:
  """The stripped lines of a caption file (UTF-8, else latin-1; LF or CRLF).

  Lines end at ``\\n`` only (as Python 2's file iteration in the original code), so a
  stray form feed or Unicode line separator inside a caption never shifts the alignment;
  a final newline adds no caption.
  """
  data = pathlib.Path(path).read_bytes()
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError:
    text = data.decode('latin-1')
  lines = text.split('\n')
  if lines and lines[-1] == '':
    lines.pop()
  return [line.strip() for line in lines]


def load_split(
  data_dir: str | os.PathLike,
  split: str,
  layout: str = 'auto',
  cnn: str = '10crop',
  name: str = 'coco',
  feature_dim: int = FEATURE_DIM,
  captions_per_image: int = CAPTIONS_PER_IMAGE,
  mmap: bool = True,
) -> dict:
  """One split: ``{'captions': list[str] (5N), 'images': float32[N, feature_dim]}``.

  Args:
    data_dir: the directory of either layout.
    split: ``'train'``, ``'dev'`` (``val.txt`` in the order layout) or ``'test'``.
    layout: ``'auto'`` (detected), ``'order'`` or ``'vse'`` (module docstring).
    cnn: the feature folder of the order layout (``images/<cnn>/``).
    name: the file prefix of the vse layout.
    feature_dim: the required width of the feature matrix.
    captions_per_image: captions ``k*i .. k*i + k-1`` belong to image ``i``.
    mmap: memory-map the features (read-only) instead of reading them.

  Raises:
    FileNotFoundError: a file of the split is missing (named).
    ValueError: features of another width or rank, or a caption count that is not
      ``captions_per_image`` times the number of images.
  """
  if layout == 'auto':
    layout = detect_layout(data_dir, cnn, name)
  caps_path, ims_path = split_files(data_dir, split, layout, cnn, name)
  missing = [str(p) for p in (caps_path, ims_path) if not p.is_file()]
  if missing:
    raise FileNotFoundError(
      f'COCO split {split!r} ({layout} layout): missing {" and ".join(missing)}.'
    )
  images = np.load(ims_path, mmap_mode='r' if mmap else None)
  if images.ndim != 2 or images.shape[1] != feature_dim:
    raise ValueError(
      f'{ims_path}: image features of shape {images.shape}; expected [N, {feature_dim}] '
      '(set feature_dim for other features).'
    )
  if images.dtype != np.float32:
    images = np.asarray(images, np.float32)
  captions = read_captions(caps_path)
  if len(captions) != captions_per_image * len(images):
    raise ValueError(
      f'{caps_path}: {len(captions)} captions for the {len(images)} images of {ims_path}; '
      f'expected {captions_per_image} per image ({captions_per_image * len(images)}).'
    )
  return {'captions': captions, 'images': images}


def load_coco(
  data_dir: str | os.PathLike,
  splits: tuple[str, ...] = SPLITS,
  layout: str = 'auto',
  **kwargs,
) -> dict[str, dict]:
  """:func:`load_split` of each of ``splits``: ``{split: {'captions', 'images'}}``."""
  if layout not in LAYOUTS:
    raise ValueError(f'unknown COCO layout {layout!r}; allowed: {", ".join(LAYOUTS)}.')
  if layout == 'auto':
    layout = detect_layout(data_dir, kwargs.get('cnn', '10crop'), kwargs.get('name', 'coco'))
  return {split: load_split(data_dir, split, layout, **kwargs) for split in splits}


class CocoCaptions(tfds.core.GeneratorBasedBuilder):
  """tfds builder of the COCO caption/feature files in ``manual_dir`` (either layout).

  One example per image: ``{'image_features': float32[4096], 'captions': 5 texts}``,
  keyed by the image's position in its split. Splits ``train``, ``validation`` (the dev
  split: ``val`` / ``*_dev_*``) and ``test``. Written as ArrayRecord by default, so
  ``as_data_source(split)`` reads it without TensorFlow.
  """

  name = 'lnorm_coco_captions'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Put the COCO captions and 4096-d image features in manual_dir, in the layout of '
    'ivendrov/order-embedding (train.txt, val.txt, test.txt, images/10crop/{train,val,test}.npy; '
    'unzip its coco.zip) or of visual-semantic-embedding (coco_{train,dev,test}_caps.txt, '
    'coco_{train,dev,test}_ims.npy).'
  )

  def __init__(self, *, file_format: str = 'array_record', **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description='MSCOCO captions (5 per image) with precomputed 4096-d image features.',
      features=tfds.features.FeaturesDict(
        {
          'image_features': tfds.features.Tensor(shape=(FEATURE_DIM,), dtype=np.float32),
          'captions': tfds.features.Sequence(tfds.features.Text(), length=CAPTIONS_PER_IMAGE),
        }
      ),
      supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    layout = detect_layout(root)
    names = {'train': 'train', 'validation': 'dev', 'test': 'test'}
    return {
      tfds_split: self._generate_examples(load_split(root, split, layout))
      for tfds_split, split in names.items()
    }

  def _generate_examples(self, data):
    k = CAPTIONS_PER_IMAGE
    for i in range(len(data['images'])):
      yield (
        i,
        {
          'image_features': np.asarray(data['images'][i], np.float32),
          'captions': data['captions'][k * i : k * (i + 1)],
        },
      )


def prepare(manual_dir: str | os.PathLike, data_dir: str | os.PathLike) -> CocoCaptions:
  """Builds :class:`CocoCaptions` from ``manual_dir`` into ``data_dir`` (once); returns it."""
  builder = CocoCaptions(data_dir=os.fspath(data_dir))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  )
  return builder
