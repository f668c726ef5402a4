"""IAM-OnDB (IAM On-Line Handwriting Database) as distributed, for the paper's §6.5.

The database (Liwicki & Bunke 2005; https://fki.tic.heia-fr.ch/databases/iam-on-line-
handwriting-database) may not be redistributed: a user who has it points
``--config.data_dir`` (or ``$LNORM_DATA_DIR/iam_ondb``) at the folder holding its two
archives unpacked side by side::

  lineStrokes/<a>/<a-b>/<a-b-c>-NN.xml     one text line's pen trace, e.g.
                                          lineStrokes/a01/a01-000/a01-000u-01.xml
  ascii/<a>/<a-b>/<a-b-c>.txt              the form's transcription, e.g.
                                          ascii/a01/a01-000/a01-000u.txt
  trainset.txt testset_v.txt testset_t.txt testset_f.txt    (optional) the task's
                                          form lists, one form id (``a01-000u``) a line

A stroke file is XML: ``<WhiteboardCaptureSession>`` holding a ``<StrokeSet>`` of
``<Stroke>`` elements, each a sequence of ``<Point x=".." y=".." time=".."/>`` in whiteboard
units with ``y`` growing downward. A transcription file holds the text lines of the form
after a line ``CSR:`` (and a blank line); its ``k``-th non-empty line is the text of the
``k``-th stroke file of the form in the order of ``NN``. A form whose number of stroke
files differs from its number of CSR lines raises an error naming both files (the
loader's ``on_mismatch='skip'`` drops such forms instead, with a warning).

What a line becomes (:func:`parse_strokes`, :func:`to_offsets`):

* absolute points ``<float32>[N, 3]`` ``(x, -y, eos)`` in stroke order, with ``y``
  flipped to grow upward and ``eos = 1`` on the last point of every stroke (empty strokes
  are dropped);
* the model's inputs, as in Graves (2013, §4): offsets between consecutive points
  ``(x_t - x_{t-1}, y_t - y_{t-1}, eos_t)`` for ``t = 1 .. N-1`` (the first point is the
  line's origin), across pen-ups too, so the pen-up moves are part of the sequence;
* standardised offsets ``(d - mean) / std`` per coordinate with the mean and standard
  deviation of the training set's offsets (:func:`offset_stats`), which the experiment
  stores with its prepared data (the ``eos`` bit is left as it is).

Splits (:func:`split_lines`): from the form lists where present, else a seeded split by
form. The :class:`IamOnDb` tfds builder (``manual_dir``: the folder above) writes the
same lines, with one split per list file present (or ``train`` only).
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence

import numpy as np

#: The task's form lists (IAM-OnDB-t1), by split name of the files.
LIST_NAMES = ('trainset', 'testset_v', 'testset_t', 'testset_f')
MISMATCH_ACTIONS = ('error', 'skip')
_STROKE_FILE = re.compile(r'^(?P<form>[A-Za-z0-9]+-[A-Za-z0-9]+)-(?P<line>\d+)\.xml$')


def parse_strokes(path: str | os.PathLike) -> np.ndarray:
  """The points of one ``lineStrokes`` XML file: ``<float32>[N, 3]`` ``(x, -y, eos)``.

  Raises:
    ValueError: the file is not well-formed XML, has no ``StrokeSet``, has a ``Point``
      without numeric ``x``/``y``, or holds no point; the message names the file.
  """
  path = pathlib.Path(path)
  try:
    root = ET.parse(path).getroot()
  except ET.ParseError as e:
    raise ValueError(f'{path}: malformed XML ({e}).') from None
  stroke_set = root if root.tag == 'StrokeSet' else root.find('StrokeSet')
  if stroke_set is None:
    raise ValueError(f'{path}: no <StrokeSet> element; expected an IAM-OnDB lineStrokes file.')
  strokes = []
  for stroke in stroke_set.iter('Stroke'):
    pts = []
    for point in stroke.iter('Point'):
      try:
        pts.append((float(point.attrib['x']), -float(point.attrib['y'])))
      except (KeyError, ValueError):
        raise ValueError(
          f'{path}: a <Point> without numeric x and y attributes: {point.attrib!r}.'
        ) from None
    if pts:
      strokes.append(np.array(pts, np.float64))
  if not strokes:
    raise ValueError(f'{path}: no <Point> in any <Stroke>.')
  eos = [np.eye(1, len(s), len(s) - 1)[0] for s in strokes]
  return np.concatenate([np.concatenate(strokes), np.concatenate(eos)[:, None]], 1).astype(
    np.float32
  )


def read_transcription(path: str | os.PathLike) -> list[str]:
  """The text lines after ``CSR:`` in an ``ascii`` file (blank lines skipped).

  Raises:
    ValueError: the file has no ``CSR:`` line.
  """
  path = pathlib.Path(path)
  lines = path.read_text('latin-1').replace('\r\n', '\n').split('\n')
  for i, line in enumerate(lines):
    if line.strip() == 'CSR:':
      return [t.strip() for t in lines[i + 1 :] if t.strip()]
  raise ValueError(f'{path}: no "CSR:" line; expected an IAM-OnDB ascii transcription.')


def _check_root(root: pathlib.Path) -> None:
  for sub in ('lineStrokes', 'ascii'):
    if not (root / sub).is_dir():
      raise FileNotFoundError(
        f'IAM-OnDB: {str(root / sub)!r} does not exist; data_dir must hold lineStrokes/ and '
        'ascii/ as unpacked from lineStrokes-all.tar.gz and ascii-all.tar.gz.'
      )


def iter_lines(root: str | os.PathLike, on_mismatch: str = 'error') -> Iterator[dict[str, object]]:
  """Every line of the database under ``root``, form by form in sorted order.

  Yields:
    ``{'id': 'a01-000u-01', 'form': 'a01-000u', 'text': str, 'points': <float32>[N, 3]}``.

  Raises:
    FileNotFoundError: ``root`` lacks ``lineStrokes/`` or ``ascii/``, or a form's
      transcription is missing (with ``on_mismatch='error'``).
    ValueError: a form's stroke files and CSR lines differ in number (with
      ``on_mismatch='error'``), or a file is malformed (always).
  """
  if on_mismatch not in MISMATCH_ACTIONS:
    raise ValueError(f'on_mismatch must be one of {MISMATCH_ACTIONS}; got {on_mismatch!r}.')
  root = pathlib.Path(root).expanduser()
  _check_root(root)
  forms: dict[str, list[tuple[int, pathlib.Path]]] = {}
  for path in sorted((root / 'lineStrokes').rglob('*.xml')):
    m = _STROKE_FILE.match(path.name)
    if m is None:
      raise ValueError(
        f'{path}: not named <a-b-c>-NN.xml as IAM-OnDB stroke files are (e.g. a01-000u-01.xml).'
      )
    forms.setdefault(m['form'], []).append((int(m['line']), path))
  if not forms:
    raise FileNotFoundError(f'IAM-OnDB: no stroke files (*.xml) under {root / "lineStrokes"}.')
  for form in sorted(forms):
    files = [p for _, p in sorted(forms[form])]
    # ascii/ mirrors lineStrokes/: lineStrokes/a01/a01-000/ -> ascii/a01/a01-000/.
    folder = files[0].parent.relative_to(root / 'lineStrokes')
    txt = root / 'ascii' / folder / f'{form}.txt'
    if not txt.is_file():
      message = f'IAM-OnDB: no transcription {txt} for the stroke files of form {form}.'
      if on_mismatch == 'error':
        raise FileNotFoundError(message)
      logging.warning('%s Skipped.', message)
      continue
    texts = read_transcription(txt)
    if len(texts) != len(files):
      message = (
        f'IAM-OnDB: form {form} has {len(files)} stroke files ({files[0].parent}) but '
        f'{len(texts)} CSR lines in {txt}.'
      )
      if on_mismatch == 'error':
        raise ValueError(message + " Use on_mismatch='skip' to drop such forms.")
      logging.warning('%s Skipped.', message)
      continue
    for path, text in zip(files, texts, strict=True):
      yield {'id': path.stem, 'form': form, 'text': text, 'points': parse_strokes(path)}


def read_form_lists(root: str | os.PathLike) -> dict[str, list[str]]:
  """The form lists present in ``root`` (``trainset.txt``, ...): ``{list name: [form ids]}``."""
  root = pathlib.Path(root).expanduser()
  out = {}
  for name in LIST_NAMES:
    path = root / f'{name}.txt'
    if path.is_file():
      out[name] = [t.strip() for t in path.read_text('latin-1').split() if t.strip()]
  return out


def split_lines(
  lines: Sequence[dict],
  form_lists: dict[str, list[str]],
  splits: dict[str, Sequence[str]],
  *,
  seed: int = 0,
  fractions: dict[str, float] | None = None,
) -> dict[str, list[dict]]:
  """Splits lines by form.

  Args:
    lines: as :func:`iter_lines` yields.
    form_lists: as :func:`read_form_lists` gives. A list entry is a form id
      (``a01-000u``) or a line id (``a01-000u-01``).
    splits: ``{split: list names}``, e.g. ``{'train': ['trainset'], 'valid': ['testset_v']}``.
      Used when every list named is present.
    seed: the seeded split's seed (used when a named list is missing).
    fractions: the seeded split's fractions by split name, except the first split,
      which takes the rest (default ``{'valid': 0.05, 'test': 0.05}`` of the forms).

  Returns:
    ``{split: [line, ...]}`` in the order of ``lines``.

  Raises:
    ValueError: a list names no line that was loaded.
  """
  names = [n for ns in splits.values() for n in ns]
  if names and all(n in form_lists for n in names):
    out = {}
    for split, list_names in splits.items():
      ids = {i for n in list_names for i in form_lists[n]}
      out[split] = [ln for ln in lines if ln['form'] in ids or ln['id'] in ids]
      if ids and not out[split]:
        raise ValueError(
          f'IAM-OnDB: the lists {", ".join(list_names)} name no line that was loaded '
          f'(e.g. {sorted(ids)[0]!r}).'
        )
    return out
  missing = [n for n in names if n not in form_lists]
  if missing:
    logging.info('IAM-OnDB: no %s: a seeded split by form.', ', '.join(f'{n}.txt' for n in missing))
  fractions = dict(fractions or {'valid': 0.05, 'test': 0.05})
  forms = sorted({ln['form'] for ln in lines})
  order = np.random.default_rng(seed).permutation(len(forms))
  assignment, start = {}, 0
  first, *others = list(splits)
  for split in others:
    n = int(round(fractions.get(split, 0.0) * len(forms)))
    for k in order[start : start + n]:
      assignment[forms[k]] = split
    start += n
  return {s: [ln for ln in lines if assignment.get(ln['form'], first) == s] for s in splits}


# ----------------------------------------------------------------------------------------
# Offsets, shared with the Hershey stand-in.


def to_offsets(points: np.ndarray) -> np.ndarray:
  """``<float32>[N, 3]`` absolute ``(x, y, eos)`` -> ``<float32>[N-1, 3]`` ``(dx, dy, eos)``.

  Row ``t - 1`` is ``(x_t - x_{t-1}, y_t - y_{t-1}, eos_t)`` for ``t = 1 .. N-1``.
  """
  points = np.asarray(points, np.float32)
  return np.concatenate([np.diff(points[:, :2], axis=0), points[1:, 2:]], axis=1)


def offset_stats(offsets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Mean and standard deviation ``<float32>[2]`` of ``(dx, dy)`` over all the points given."""
  d = np.concatenate([np.asarray(o, np.float64)[:, :2] for o in offsets])
  return d.mean(0).astype(np.float32), np.maximum(d.std(0), 1e-8).astype(np.float32)


def standardize(offsets: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """``(dx - mean) / std`` per coordinate; ``eos`` unchanged."""
  out = np.array(offsets, np.float32)
  out[..., :2] = (out[..., :2] - mean) / std
  return out


def to_points(offsets: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """Standardised offsets ``[T, 3]`` back to absolute points ``[T + 1, 3]`` from the origin."""
  d = np.asarray(offsets, np.float64)[:, :2] * std + mean
  xy = np.concatenate([np.zeros((1, 2)), np.cumsum(d, axis=0)])
  eos = np.concatenate([[0.0], np.asarray(offsets)[:, 2]])
  return np.concatenate([xy, eos[:, None]], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------
# tfds builder.


_BUILDER: list[type] = []


def _builder_class():
  """:class:`IamOnDb`, built once on first use, so that reading the XML never imports tfds."""
  if _BUILDER:
    return _BUILDER[0]
  import tensorflow_datasets as tfds

  class IamOnDb(tfds.core.GeneratorBasedBuilder):
    """tfds builder of IAM-OnDB lines from ``manual_dir`` (the layout of the module docstring).

    Features: ``points`` ``<float32>[N, 3]`` absolute ``(x, -y, eos)``, ``text``, ``id``,
    ``form``. Splits: one per form list present in ``manual_dir`` (``trainset``,
    ``testset_v``, ``testset_t``, ``testset_f``), else ``train`` with every line. Written
    as ArrayRecord, so ``as_data_source(split)`` reads it without TensorFlow.
    """

    name = 'lnorm_iam_ondb'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial release.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Register at https://fki.tic.heia-fr.ch/databases/iam-on-line-handwriting-database, '
      'download lineStrokes-all.tar.gz and ascii-all.tar.gz (and the task lists trainset.txt, '
      'testset_v.txt, testset_t.txt, testset_f.txt), and unpack them into manual_dir so that '
      'it holds lineStrokes/ and ascii/.'
    )

    def __init__(self, *, file_format: str = 'array_record', **kwargs):
      super().__init__(file_format=file_format, **kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        description='IAM On-Line Handwriting Database: pen traces of text lines.',
        features=tfds.features.FeaturesDict(
          {
            'points': tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
            'text': tfds.features.Text(),
            'id': tfds.features.Text(),
            'form': tfds.features.Text(),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      root = pathlib.Path(dl_manager.manual_dir)
      _check_root(root)
      lists = read_form_lists(root)
      if not lists:
        return {'train': self._generate_examples(root, None)}
      return {name: self._generate_examples(root, set(ids)) for name, ids in lists.items()}

    def _generate_examples(self, root, ids):
      for line in iter_lines(root):
        if ids is None or line['form'] in ids or line['id'] in ids:
          yield line['id'], line

  _BUILDER.append(IamOnDb)
  return IamOnDb


def __getattr__(name: str):
  if name == 'IamOnDb':
    return _builder_class()
  raise AttributeError(name)


def prepare(manual_dir: str | os.PathLike, data_dir: str | os.PathLike):
  """Builds the :class:`IamOnDb` tfds data set from ``manual_dir`` into ``data_dir`` (once)."""
  import tensorflow_datasets as tfds

  builder = _builder_class()(data_dir=os.fspath(data_dir))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  )
  return builder
