"""A book corpus of contiguous sentences: (previous, current, next) triples for skip-thoughts.

Two file layouts, one book per ``*.txt`` file anywhere under ``manual_dir`` (sorted by
path, read as UTF-8, falling back to latin-1):

* ``'text'``: running text as Project Gutenberg publishes it: hard-wrapped lines,
  paragraphs separated by blank lines. The Gutenberg licence header and footer are
  stripped (:func:`strip_gutenberg`), then paragraphs are split into sentences with
  :func:`lnorm.lab.text.split_sentences`. ``../shared/data/books`` (16 public-domain books,
  about 1.1M words) is this layout.
* ``'lines'``: BookCorpus style, one sentence per line (blank lines ignored).
* ``'auto'`` (default) picks ``'lines'`` for a file when at least 60% of its non-empty lines
  end a sentence (``. ! ?`` possibly followed by closing quotes/brackets) and ``'text'``
  otherwise (hard-wrapped prose ends a sentence on about one line in five).

Triples never cross a book boundary: a book of ``n`` sentences gives ``n - 2`` triples,
whose ``current`` sentences are its sentences ``1 .. n-2``. Sentences are kept as text
(tokenize them with :func:`lnorm.lab.text.tokenize`); sentences without any letter
(``* * *``, page numbers) are dropped.

The readers are plain Python (no TensorFlow): training tokenizes the books once and
caches the ids in the workdir, which is faster than any prepared format would be here.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Iterator

from lnorm.lab import text as text_lib

LAYOUTS = ('auto', 'text', 'lines')

# Lines that end the Gutenberg header: the modern start marker, or the end of the old
# "small print" licence that older e-texts put before the book.
_HEADER_END = re.compile(
  r'^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG'
  r'|^\s*\*+\s*END\*?\s*THE SMALL PRINT',
  re.IGNORECASE,
)
# Lines that start the footer: the modern end marker, the old "End of (the) Project
# Gutenberg ..." line, or the licence when it follows the book.
_FOOTER_START = re.compile(
  r'^\s*\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG'
  r'|^\s*End of (?:the |this )?Project Gutenberg'
  r'|^\s*\*+\s*START\**\s*THE SMALL PRINT',
  re.IGNORECASE,
)
# Paragraphs left over from Gutenberg's own notes (release notes, editors' notes).
_GUTENBERG_NOTE = re.compile(r'project gutenberg|\betexts?\b|\bebooks?\b', re.IGNORECASE)
_SENTENCE_END = re.compile(r'[.!?]["\'”’)\]]*$')


def strip_gutenberg(text: str) -> str:
  """Removes a Project Gutenberg licence header and footer, if there are any.

  The header ends at the last header marker in the first half of the lines: the
  ``*** START OF THE/THIS PROJECT GUTENBERG ...`` line or, in older e-texts, the
  ``*END*THE SMALL PRINT! ...`` line that closes the licence. The footer starts at the
  first footer marker after that: ``*** END OF THE/THIS PROJECT GUTENBERG ...``,
  ``End of (the) Project Gutenberg ...``, or a licence (``***START**THE SMALL PRINT``)
  placed after the book. Paragraphs that still mention Project Gutenberg, e-texts or
  e-books (release notes) are dropped. Text without markers is returned unchanged apart
  from that filter.

  Args:
    text: a whole book.

  Returns:
    The body of the book; paragraph breaks (blank lines) are kept.
  """
  lines = text.replace('\r\n', '\n').replace('\r', '\n').split('\n')
  start = 0
  for i, line in enumerate(lines[: len(lines) // 2]):
    if _HEADER_END.search(line):
      start = i + 1
  end = len(lines)
  for i in range(start, len(lines)):
    if _FOOTER_START.search(lines[i]):
      end = i
      break
  body = '\n'.join(lines[start:end])
  paragraphs = re.split(r'\n[ \t\f\v]*\n', body)
  return '\n\n'.join(p for p in paragraphs if not _GUTENBERG_NOTE.search(p))


def _read_text(path: pathlib.Path) -> str:
  data = path.read_bytes()
  try:
    return data.decode('utf-8-sig')
  except UnicodeDecodeError:
    return data.decode('latin-1')


def detect_layout(text: str) -> str:
  """``'lines'`` when >= 60% of the non-empty lines end a sentence, else ``'text'``."""
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if not lines:
    return 'text'
  ends = sum(1 for line in lines if _SENTENCE_END.search(line))
  return 'lines' if ends >= 0.6 * len(lines) else 'text'


def book_sentences(path: str | os.PathLike, layout: str = 'auto') -> list[str]:
  """The sentences of one book file, in order (see the module docstring for layouts)."""
  if layout not in LAYOUTS:
    raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  text = _read_text(pathlib.Path(path))
  if layout == 'auto':
    layout = detect_layout(text)
  if layout == 'lines':
    sentences = [' '.join(line.split()) for line in text.splitlines()]
  else:
    sentences = text_lib.split_sentences(strip_gutenberg(text))
  return [s for s in sentences if any(c.isalpha() for c in s)]


def book_files(manual_dir: str | os.PathLike) -> list[pathlib.Path]:
  """The ``*.txt`` files under ``manual_dir``, sorted; fails clearly when there are none."""
  root = pathlib.Path(manual_dir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(
      f'book corpus directory {str(root)!r} does not exist; expected a directory of '
      'plain-text books (*.txt, e.g. ../shared/data/books) or BookCorpus-style files with '
      'one sentence per line'
    )
  files = sorted(p for p in root.rglob('*.txt') if p.is_file())
  if not files:
    raise FileNotFoundError(
      f'no book files (*.txt) under {str(root)!r}; expected plain-text books or '
      'BookCorpus-style files with one sentence per line'
    )
  return files


def book_name(path: pathlib.Path, manual_dir: str | os.PathLike) -> str:
  """The book's id: its path relative to ``manual_dir`` without ``.txt``."""
  rel = path.relative_to(pathlib.Path(manual_dir).expanduser())
  return rel.with_suffix('').as_posix()


def iter_triples(manual_dir: str | os.PathLike, layout: str = 'auto') -> Iterator[dict]:
  """(previous, current, next) sentence triples of every book under ``manual_dir``.

  Args:
    manual_dir: directory holding the books (``*.txt``, searched recursively).
    layout: ``'auto'``, ``'text'`` or ``'lines'`` (module docstring).

  Yields:
    Dicts ``{'book': str, 'index': int, 'previous': str, 'current': str, 'next': str}``,
    ``index`` being the position of ``current`` in its book; books in path order.
  """
  for path in book_files(manual_dir):
    name = book_name(path, manual_dir)
    sentences = book_sentences(path, layout)
    for i in range(1, len(sentences) - 1):
      yield {
        'book': name,
        'index': i,
        'previous': sentences[i - 1],
        'current': sentences[i],
        'next': sentences[i + 1],
      }
