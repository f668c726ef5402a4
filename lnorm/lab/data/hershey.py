"""A synthetic stand-in for IAM-OnDB: lines of book text drawn with the Hershey fonts.

**This is not handwriting.** IAM-OnDB (the paper's §6.5 data) may not be shipped, so the
handwriting experiment is shown here on pen trajectories rendered from the single-stroke
Hershey vector fonts (``../shared/data/hershey``, Debian's ``hershey-fonts-data``) and
distorted per "writer". Like IAM-OnDB, each example is an on-line pen trace of one line of
real English text (from ``../shared/data/books``) with its transcription, so the synthesis
network must learn the alignment between points and characters; unlike it, every letter
of a font has one fixed skeleton, so the task is much easier than real handwriting and
its numbers are not comparable with the paper's.

The Hershey fonts come with this licence condition, which applies to every data set and
figure derived from them here (:data:`ACKNOWLEDGEMENTS` is written next to any derived
file, see :func:`write_acknowledgements`):

  The Hershey Fonts were originally created by Dr. A. V. Hershey while working at the
  U. S. National Bureau of Standards. The format of the Font data in this distribution
  was originally created by James Hurt, Cognition, Inc., 900 Technology Park Drive,
  Billerica, MA 01821 (mit-eddie!ci-dandelion!hurt).

File format (``.jhf``, James Hurt's): one record per glyph; a record is a 5-character
glyph id, a 3-character vertex count ``n`` (right-aligned), then ``n`` coordinate pairs of
two characters each, every coordinate the character's code minus ``ord('R')``. The first
pair is the glyph's left and right bounds (its advance is ``right - left``); the pair
``' R'`` lifts the pen (ends a stroke). ``y`` grows downward. Long records may wrap over
several lines (the classic files wrap at 72 columns); the Debian files do not. The fonts
used here hold ASCII 32-126 in order (record ``i`` is ``chr(32 + i)``; a 96th record, a
filled box, is ignored).

Rendering a line (:func:`render_line`), for a writer with :class:`WriterStyle`:

1. Each character's strokes are placed at the pen's position (advance ``right - left``
   plus the writer's letter spacing); every stroke ends with a pen-up (``eos = 1``), so
   there is a pen-up between glyphs and between the strokes of one glyph, as on a
   whiteboard.
2. ``y`` is flipped to grow upward (as :mod:`lnorm.lab.data.iam_ondb` gives), the line is
   slanted (``x += slant * y``) and scaled.
3. Each stroke is resampled at an even arc-length step (the writer's pen speed) so the
   number of points follows the length of the trace, not the font's vertex count.
4. A smooth random displacement (a sum of a few random sinusoids of the arc length along
   the whole line) is added to every point: the writer's "hand".

Writers draw their style from ``(seed, writer)``, and lines from ``(seed, writer, line)``,
so the data set is a pure function of its arguments. Splits are by writer
(:func:`make_dataset`): no writer of the validation or test set wrote a training line.

Points come out as absolute ``<float32>[N, 3]`` ``(x, y, eos)`` arrays in font units (about
21 units per capital letter before scaling); :func:`lnorm.lab.data.iam_ondb.to_offsets`
turns them into the model's offsets, exactly as for IAM-OnDB.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np

#: The handwriting-like Hershey fonts (single-stroke cursive and script faces).
SCRIPT_FONTS = ('cursive', 'scripts', 'scriptc')
#: The first character of a font's records, and how many printable ASCII characters follow.
FIRST_CHAR, NUM_CHARS = 32, 95

ACKNOWLEDGEMENTS = """\
Derived from the Hershey Fonts (Debian package hershey-fonts-data).
- The Hershey Fonts were originally created by Dr. A. V. Hershey while working at the
  U. S. National Bureau of Standards.
- The format of the Font data in this distribution was originally created by
    James Hurt
    Cognition, Inc.
    900 Technology Park Drive
    Billerica, MA 01821
    (mit-eddie!ci-dandelion!hurt)
The font data may be converted into any other format except the format distributed by
the U.S. NTIS. Full terms: the COPYRIGHT file next to the .jhf files.
"""
ACKNOWLEDGEMENTS_FILE = 'HERSHEY_ACKNOWLEDGEMENTS.txt'


@dataclasses.dataclass(frozen=True)
class Glyph:
  """One Hershey glyph.

  Attributes:
    left, right: the horizontal bounds; the advance is ``right - left``.
    strokes: pen-down polylines, each ``<int32>[n, 2]`` ``(x, y)`` with ``y`` down.
  """

  left: int
  right: int
  strokes: tuple[np.ndarray, ...]


def parse_jhf(text: str, source: str = '<string>') -> list[Glyph]:
  """The glyphs of a ``.jhf`` file's text, in file order (format in the module docstring).

  Raises:
    ValueError: a malformed record; the message names ``source`` and the record's line.
  """
  lines = text.replace('\r\n', '\n').split('\n')
  glyphs = []
  i = 0
  while i < len(lines):
    line, first = lines[i], i + 1
    i += 1
    if not line.strip():
      continue
    count_text = line[5:8]
    if len(line) < 8 or not count_text.strip().isdigit():
      raise ValueError(
        f'{source}: line {first} is not a Hershey record (a 5-character id, a 3-digit '
        f'vertex count, then coordinate pairs); it starts {line[:16]!r}.'
      )
    count = int(count_text)
    body = line[8:]
    while len(body) < 2 * count and i < len(lines):  # A record wrapped over lines.
      body += lines[i]
      i += 1
    if len(body) != 2 * count or count < 1:
      raise ValueError(
        f'{source}: the record at line {first} declares {count} vertices but holds '
        f'{len(body) / 2:g} coordinate pairs.'
      )
    codes = np.frombuffer(body.encode('latin-1'), np.uint8).astype(np.int32) - ord('R')
    pairs = codes.reshape(count, 2)
    pen_up = np.array([body[2 * k : 2 * k + 2] == ' R' for k in range(count)])
    strokes, current = [], []
    for k in range(1, count):
      if pen_up[k]:
        if current:
          strokes.append(np.array(current, np.int32))
        current = []
      else:
        current.append(pairs[k])
    if current:
      strokes.append(np.array(current, np.int32))
    glyphs.append(Glyph(int(pairs[0, 0]), int(pairs[0, 1]), tuple(strokes)))
  return glyphs


def load_font(path: str | os.PathLike) -> dict[str, Glyph]:
  """The ASCII 32-126 glyphs of a Roman-ordered ``.jhf`` font, keyed by character."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'Hershey font {str(path)!r} does not exist.')
  glyphs = parse_jhf(path.read_text('latin-1'), str(path))
  if len(glyphs) < NUM_CHARS:
    raise ValueError(
      f'{path}: {len(glyphs)} glyphs; a font in ASCII order needs at least {NUM_CHARS} '
      f'(characters {FIRST_CHAR}-{FIRST_CHAR + NUM_CHARS - 1}).'
    )
  return {chr(FIRST_CHAR + k): glyphs[k] for k in range(NUM_CHARS)}


def load_fonts(hershey_dir: str | os.PathLike, names: Sequence[str]) -> dict[str, dict]:
  """``{name: load_font(<hershey_dir>/<name>.jhf)}``; a clear error for a missing folder."""
  root = pathlib.Path(hershey_dir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(
      f'Hershey font directory {str(root)!r} does not exist; expected the .jhf files of '
      "Debian's hershey-fonts-data (e.g. ../shared/data/hershey)."
    )
  missing = [n for n in names if not (root / f'{n}.jhf').is_file()]
  if missing:
    have = sorted(p.stem for p in root.glob('*.jhf'))
    raise FileNotFoundError(
      f'no {", ".join(f"{n}.jhf" for n in missing)} in {root}; the fonts there are: '
      f'{", ".join(have) or "(none)"}.'
    )
  return {n: load_font(root / f'{n}.jhf') for n in names}


def write_acknowledgements(directory: str | os.PathLike) -> pathlib.Path:
  """Writes :data:`ACKNOWLEDGEMENTS` to ``<directory>/HERSHEY_ACKNOWLEDGEMENTS.txt``."""
  path = pathlib.Path(directory) / ACKNOWLEDGEMENTS_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(ACKNOWLEDGEMENTS)
  return path


# ----------------------------------------------------------------------------------------
# Writers and rendering.


@dataclasses.dataclass(frozen=True)
class WriterStyle:
  """How one synthetic writer draws.

  Attributes:
    font: the name of the Hershey font.
    slant: shear ``x += slant * y`` (positive leans right).
    scale_x, scale_y: scale of the glyphs (font units per output unit).
    spacing: extra advance between letters, in font units (negative: letters overlap).
    word_spacing: extra advance of a space, in font units.
    step: the arc-length step of the resampled trace, in output units.
    jitter: amplitude of the smooth displacement, in output units.
    jitter_wavelength: its typical wavelength along the trace, in output units.
    baseline_drift: slope of the line's baseline (radians, small).
  """

  font: str
  slant: float
  scale_x: float
  scale_y: float
  spacing: float
  word_spacing: float
  step: float
  jitter: float
  jitter_wavelength: float
  baseline_drift: float


def writer_style(
  seed: int, writer: int, fonts: Sequence[str] = SCRIPT_FONTS, pen_step: float = 2.7
) -> WriterStyle:
  """The style of ``writer`` (a pure function of its arguments).

  ``pen_step`` is the mean arc-length step between points (each writer's is within 15%
  of it): 2.7 gives about 21 points per character, near IAM-OnDB's density; larger steps
  give shorter sequences for the same text.
  """
  rng = np.random.default_rng([seed, writer, 0])
  scale = float(rng.uniform(0.8, 1.25))
  return WriterStyle(
    font=str(fonts[int(rng.integers(len(fonts)))]),
    slant=float(rng.uniform(-0.15, 0.45)),
    scale_x=scale * float(rng.uniform(0.85, 1.15)),
    scale_y=scale,
    spacing=float(rng.uniform(-1.5, 2.5)),
    word_spacing=float(rng.uniform(-3.0, 4.0)),
    step=pen_step * float(rng.uniform(0.85, 1.15)),
    jitter=float(rng.uniform(0.3, 1.2)),
    jitter_wavelength=float(rng.uniform(15.0, 40.0)),
    baseline_drift=float(rng.normal(0.0, 0.02)),
  )


def _resample(stroke: np.ndarray, step: float) -> np.ndarray:
  """A polyline ``[n, 2]`` resampled at an even arc-length ``step`` (ends kept)."""
  seg = np.sqrt(np.sum(np.diff(stroke, axis=0) ** 2, axis=1))
  arc = np.concatenate([[0.0], np.cumsum(seg)])
  total = arc[-1]
  if total == 0:
    return stroke[:1].astype(np.float64)
  n = max(2, int(np.ceil(total / step)) + 1)
  s = np.linspace(0.0, total, n)
  return np.stack([np.interp(s, arc, stroke[:, 0]), np.interp(s, arc, stroke[:, 1])], axis=1)


def render_line(
  text: str, fonts: dict[str, dict[str, Glyph]], style: WriterStyle, rng: np.random.Generator
) -> np.ndarray:
  """The pen trace of ``text`` by a writer: ``<float32>[N, 3]`` absolute ``(x, y, eos)``.

  ``y`` grows upward; ``eos = 1`` on the last point of every stroke. The steps are those of
  the module docstring; ``rng`` draws the jitter (phases and wavelengths) of this line.

  Raises:
    ValueError: ``text`` holds a character the font lacks, or draws nothing.
  """
  font = fonts[style.font]
  bad = sorted({c for c in text if c not in font})
  if bad:
    raise ValueError(f'characters {bad!r} are not in the Hershey font {style.font!r}.')
  strokes = []
  pen = 0.0
  for ch in text:
    glyph = font[ch]
    for s in glyph.strokes:
      xy = s.astype(np.float64)
      strokes.append(np.stack([xy[:, 0] - glyph.left + pen, -xy[:, 1]], axis=1))
    pen += glyph.right - glyph.left + (style.word_spacing if ch == ' ' else style.spacing)
  if not strokes:
    raise ValueError(f'the text {text!r} draws no strokes.')
  sx, sy = style.scale_x, style.scale_y
  cos, sin = np.cos(style.baseline_drift), np.sin(style.baseline_drift)
  out = []
  for s in strokes:
    x = (s[:, 0] + style.slant * s[:, 1]) / sx
    y = s[:, 1] / sy
    x, y = cos * x - sin * y, sin * x + cos * y
    out.append(_resample(np.stack([x, y], axis=1), style.step * float(rng.uniform(0.9, 1.1))))
  lengths = [len(s) for s in out]
  xy = np.concatenate(out)
  # Smooth displacement: a few sinusoids of the arc length along the whole trace.
  arc = np.concatenate([[0.0], np.cumsum(np.sqrt(np.sum(np.diff(xy, axis=0) ** 2, axis=1)))])
  for axis in range(2):
    for _ in range(3):
      wavelength = style.jitter_wavelength * float(rng.uniform(0.5, 2.0))
      phase = float(rng.uniform(0, 2 * np.pi))
      amp = style.jitter * float(rng.uniform(0.3, 1.0)) / np.sqrt(3)
      xy[:, axis] += amp * np.sin(2 * np.pi * arc / wavelength + phase)
  eos = np.zeros(len(xy), np.float64)
  eos[np.cumsum(lengths) - 1] = 1.0
  return np.concatenate([xy, eos[:, None]], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Text and the data set.

_ASCII_MAP = str.maketrans({'\u2018': "'", '\u2019': "'", '\u201c': '"', '\u201d': '"'})
_ASCII_MAP.update({ord('\u2014'): '-', ord('\u2013'): '-', ord('\u2026'): '...'})


def text_lines(
  sentences: Iterable[str], max_chars: int, min_chars: int = 1, charset: str | None = None
) -> list[str]:
  """Cuts running text into lines of whole words of at most ``max_chars`` characters.

  Words are taken in order and a line closes before the word that would make it longer
  than ``max_chars``; lines shorter than ``min_chars`` are dropped, and so are words
  longer than ``max_chars``. Curly quotes and dashes become ASCII; words with any other
  character outside ``charset`` (default printable ASCII) are dropped.
  """
  allowed = set(charset or ''.join(chr(c) for c in range(FIRST_CHAR, FIRST_CHAR + NUM_CHARS)))
  lines, words = [], []
  for sentence in sentences:
    for word in sentence.translate(_ASCII_MAP).split():
      if len(word) > max_chars or any(c not in allowed for c in word):
        continue
      if words and len(' '.join(words)) + 1 + len(word) > max_chars:
        line = ' '.join(words)
        if len(line) >= min_chars:
          lines.append(line)
        words = []
      words.append(word)
  if words and len(' '.join(words)) >= min_chars:
    lines.append(' '.join(words))
  return lines


def book_text_lines(books_dir: str | os.PathLike, max_chars: int, min_chars: int) -> list[str]:
  """:func:`text_lines` of every book under ``books_dir`` (:mod:`lnorm.lab.data.books`)."""
  from lnorm.lab.data import books

  out = []
  for path in books.book_files(books_dir):
    out.extend(text_lines(books.book_sentences(path), max_chars, min_chars))
  return out


def make_dataset(
  hershey_dir: str | os.PathLike,
  lines: Sequence[str],
  *,
  num_writers: int,
  lines_per_writer: int,
  split_writers: dict[str, int],
  max_points: int,
  seed: int,
  fonts: Sequence[str] = SCRIPT_FONTS,
  pen_step: float = 2.7,
) -> dict[str, list[dict]]:
  """The stand-in data set: lines of ``lines`` drawn by ``num_writers`` writers, split by writer.

  Writer ``w`` draws ``lines_per_writer`` lines chosen at random from ``lines`` (seeded by
  ``(seed, w)``); a line whose trace has more than ``max_points`` points loses its last
  word until it fits (single words that do not fit are skipped).

  Args:
    hershey_dir: the folder of the ``.jhf`` files.
    lines: the candidate texts (e.g. :func:`book_text_lines`).
    num_writers: how many writers.
    lines_per_writer: lines drawn by each writer.
    split_writers: ``{'valid': n, 'test': m}``: the last writers form these splits (in this
      order, from the end); the others are ``'train'``.
    max_points: the most points a line may have.
    seed: the data set's seed.
    fonts: the fonts writers choose from.
    pen_step: the mean arc-length step between points (:func:`writer_style`).

  Returns:
    ``{split: [{'points': <float32>[N, 3], 'text': str, 'writer': int, 'id': str}]}``.
  """
  if not lines:
    raise ValueError('no text lines to draw.')
  held_out = sum(split_writers.values())
  if held_out >= num_writers:
    raise ValueError(f'{held_out} held-out writers leave none of the {num_writers} to train on.')
  font_data = load_fonts(hershey_dir, tuple(sorted(set(fonts))))
  bounds, names, start = {}, [], num_writers
  for name, n in split_writers.items():
    bounds[name] = (start - n, start)
    names.append(name)
    start -= n
  out: dict[str, list[dict]] = {'train': [], **{n: [] for n in names}}
  for w in range(num_writers):
    split = next((n for n, (a, b) in bounds.items() if a <= w < b), 'train')
    style = writer_style(seed, w, fonts, pen_step)
    pick = np.random.default_rng([seed, w, 1])
    for j in range(lines_per_writer):
      text = lines[int(pick.integers(len(lines)))]
      words = text.split(' ')
      while words:
        text = ' '.join(words)
        points = render_line(text, font_data, style, np.random.default_rng([seed, w, 2, j]))
        if len(points) <= max_points:
          out[split].append(
            {'points': points, 'text': text, 'writer': w, 'id': f'w{w:04d}-{j:03d}'}
          )
          break
        words = words[:-1]
  return out


def check_text(text: str) -> str:
  """``text`` if every character is printable ASCII (what the fonts draw), else a ValueError."""
  bad = re.findall(r'[^\x20-\x7e]', text)
  if bad:
    raise ValueError(f'{text!r} holds characters the Hershey fonts lack: {sorted(set(bad))!r}.')
  return text
