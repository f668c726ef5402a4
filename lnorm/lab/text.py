"""Text machinery shared by the text experiments: sentences, tokens, vocabulary, batches.

The pieces, in the order a pipeline uses them:

* :func:`split_paragraphs` and :func:`split_sentences` cut running text (a book) into
  sentences with a few documented rules (below);
* :func:`tokenize` cuts a sentence into word tokens, Penn-Treebank style for clitics
  (``don't`` -> ``do n't``, ``it's`` -> ``it 's``), which is also how the SentEval files
  are already tokenized, so one vocabulary serves books and SentEval alike;
* :class:`Vocabulary` keeps the most frequent ``K`` words, with reserved ids
  ``0 = <pad>``, ``1 = <eos>``, ``2 = <unk>``; it saves to and loads from JSON;
* :func:`length_batches` groups examples of similar length (length bucketing), and
  :func:`pad_batch` pads them to the bucket's length, returning token ids
  ``int32[B, T]`` and lengths ``int32[B]``.

The padding contract: positions ``t >= lengths[b]`` hold ``PAD_ID`` (0) and carry no
information. A recurrent cell scanned with ``flax.linen.RNN(..., seq_lengths=lengths)``
(or any scan that freezes the carry past the length) gives the same final state and the
same outputs at ``t < lengths[b]`` whatever the padded length ``T`` is; the tests check
this. Padding to a small set of bucket lengths keeps the number of compiled shapes small.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

PAD, EOS, UNK = '<pad>', '<eos>', '<unk>'
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
RESERVED = (PAD, EOS, UNK)

# ----------------------------------------------------------------------------------------
# Sentence splitting.

# Words that end with a full stop without ending the sentence (compared lowercased,
# without the stop). Single letters (initials: "J. R. R. Tolkien") are handled apart.
# Words that often end a sentence ("no", "sun", "mar", "sat") are deliberately absent.
ABBREVIATIONS = frozenset(
  """mr mrs ms messrs mme mlle dr drs prof rev revd hon st sr jr capt col gen lt maj sgt
  cpl adm gov sen rep esq fr br mt ft vs etc cf viz al ibid vol vols ch chap figs pp
  jan feb apr jun jul aug sep sept oct nov dec tues thur thurs corp inc ltd bros dept
  univ approx""".split()  # noqa: SIM905
)

_OPENERS = '"\'“‘(['
_CLOSERS = '"\'”’)]'
# A candidate boundary: terminal punctuation (runs such as "?!" or "..."), then any
# closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(r'([.!?]+)([' + re.escape(_CLOSERS) + r']*)(\s+)')


def split_paragraphs(text: str) -> list[str]:
  """Splits text at blank lines; each paragraph's lines are joined by single spaces.

  Args:
    text: running text with hard-wrapped lines (``\\n`` or ``\\r\\n``).

  Returns:
    Non-empty paragraphs, whitespace collapsed to single spaces.
  """
  paragraphs = re.split(r'\n[ \t\r\f\v]*\n', text.replace('\r\n', '\n').replace('\r', '\n'))
  out = []
  for p in paragraphs:
    p = ' '.join(p.split())
    if p:
      out.append(p)
  return out


def _ends_with_abbreviation(text: str) -> bool:
  """Whether ``text`` (which ends with '.') ends with an abbreviation or an initial."""
  m = re.search(r'([^\s' + re.escape(_OPENERS) + r']+)\.$', text)
  if m is None:
    return False
  word = m.group(1)
  if len(word) == 1 and word.isalpha() and word not in ('I', 'a'):  # an initial, "J."
    return True
  # "e.g." / "i.e." / "U.S." : dotted letters.
  if re.fullmatch(r'(?:[^\W\d_]\.)+[^\W\d_]', word):
    return True
  return word.lower() in ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
  """Splits running text into sentences.

  Rules, in order:

  1. Paragraph breaks (blank lines) always end a sentence (:func:`split_paragraphs`).
  2. Inside a paragraph, a sentence ends after ``.``, ``!`` or ``?`` (or a run of them,
     such as ``?!`` or ``...``), together with any closing quotes or brackets that follow,
     when whitespace follows and the next non-quote character is not a lowercase letter.
     So ``"Stop!" she said.`` stays one sentence, and ``He left. "Wait!"`` is two.
  3. A ``.`` does not end a sentence after a known abbreviation (:data:`ABBREVIATIONS`,
     e.g. ``Mr.``, ``Mrs.``, ``Dr.``, ``St.``, ``etc.``), a single letter (an initial,
     ``J. R. R. Tolkien``), or dotted letters (``U.S.``, ``e.g.``). The price is that a
     sentence that really ends with such a word is joined to the next one.

  Args:
    text: running text; lines inside a paragraph may be hard-wrapped.

  Returns:
    Sentences with whitespace collapsed, in order; none is empty.
  """
  sentences = []
  for paragraph in split_paragraphs(text):
    start = 0
    for m in _BOUNDARY.finditer(paragraph):
      end = m.end(2)
      rest = paragraph[m.end() :].lstrip(_OPENERS)
      if rest and rest[0].islower():
        continue
      if m.group(1) == '.' and _ends_with_abbreviation(paragraph[start : m.end(1)]):
        continue
      sentence = paragraph[start:end].strip()
      if sentence:
        sentences.append(sentence)
      start = m.end()
    sentence = paragraph[start:].strip()
    if sentence:
      sentences.append(sentence)
  return sentences


# ----------------------------------------------------------------------------------------
# Tokenization.

_QUOTE_MAP = str.maketrans({'“': '"', '”': '"', '„': '"', '‘': "'", '’': "'", '‚': "'"})
_TOKEN = re.compile(
  r"""
    (?<![^\W_])n't(?![^\W_])          # "n't" standing alone (already tokenized: "do n't")
  | '(?:s|re|ve|ll|d|m)(?![^\W_])     # a clitic standing alone ("it 's")
  | (?:[^\W\d_]\.){2,}                # dotted letters: "U.S.", "e.g."
  | [^\W_]+(?:['\-][^\W_]+)*          # a word, with inner apostrophes or hyphens
  | ``|''|--+|\.\.\.+                 # LaTeX-style quotes, dashes, ellipses
  | \S                                # any other single character
  """,
  re.VERBOSE | re.IGNORECASE,
)
_CLITIC = re.compile(r"^(.+?)('(?:s|re|ve|ll|d|m))$", re.IGNORECASE)


def tokenize(sentence: str, lower: bool = True, split_clitics: bool = True) -> list[str]:
  """Cuts a sentence into word tokens.

  Rules: curly quotes become straight ones and LaTeX quotes (`````, ``''``) become ``"``;
  abbreviations (:data:`ABBREVIATIONS`), initials and dotted letters keep their stop
  (``Mr.``, ``J.``, ``U.S.``) except at the very end of the sentence; a word is a run of
  letters/digits with inner apostrophes or hyphens (``o'clock``, ``well-known``); ``--``
  and ``...`` are tokens; every other non-space character is a token of its own. With
  ``split_clitics`` (Penn Treebank style, as the SentEval files are tokenized)
  ``don't -> do n't``, ``can't -> ca n't``, ``it's -> it 's``, ``we'll -> we 'll``;
  text that is already tokenized that way keeps its tokens.

  Args:
    sentence: one sentence.
    lower: lowercase the tokens.
    split_clitics: split the clitics ``n't 's 're 've 'll 'd 'm`` from their word.

  Returns:
    The tokens, in order.
  """
  raw = _TOKEN.findall(sentence.translate(_QUOTE_MAP))
  # Keep the stop of an abbreviation ("Mr.") or of an initial ("J.") inside a sentence.
  merged = []
  for i, tok in enumerate(raw):
    if tok == '.' and merged and i < len(raw) - 1:
      prev = merged[-1]
      if prev.lower() in ABBREVIATIONS or (len(prev) == 1 and prev.isupper() and prev != 'I'):
        merged[-1] = prev + '.'
        continue
    merged.append(tok)
  tokens = []
  for tok in merged:
    if tok in ('``', "''"):
      tok = '"'
    if split_clitics and "'" in tok and len(tok) > 3:
      if tok.lower().endswith("n't"):
        tokens.extend([tok[:-3], tok[-3:]])
        continue
      m = _CLITIC.match(tok)
      if m:
        tokens.extend(m.groups())
        continue
    tokens.append(tok)
  if lower:
    tokens = [t.lower() for t in tokens]
  return tokens


# ----------------------------------------------------------------------------------------
# Vocabulary.


class Vocabulary:
  """Word <-> id map: reserved ids ``<pad>=0``, ``<eos>=1``, ``<unk>=2``, then words.

  Words are ranked by count (descending), ties broken alphabetically, so building from
  the same corpus always gives the same ids. Save the vocabulary with a run
  (:meth:`save`) and load it with the checkpoint (:meth:`load`).

  Example::

    >>> vocab = Vocabulary.build([['a', 'b', 'a'], ['c', 'a']], size=2)
    >>> vocab.words
    ['<pad>', '<eos>', '<unk>', 'a', 'b']
    >>> vocab.encode(['a', 'c'], add_eos=True).tolist()
    [3, 2, 1]
  """

  FORMAT = 'lnorm.lab.text.Vocabulary/1'

  def __init__(self, words: Sequence[str], counts: Sequence[int] | None = None):
    """Makes a vocabulary from its ordinary words (the reserved tokens are prepended).

    Args:
      words: the ordinary words, most frequent first; no duplicates, no reserved tokens.
      counts: their corpus counts (kept for the record), or None.
    """
    words = list(words)
    bad = [w for w in words if w in RESERVED]
    if bad:
      raise ValueError(f'reserved tokens {bad} cannot be ordinary words')
    self.words = list(RESERVED) + words
    self.counts = None if counts is None else [int(c) for c in counts]
    if self.counts is not None and len(self.counts) != len(words):
      raise ValueError(f'{len(words)} words but {len(self.counts)} counts')
    self._index = {w: i for i, w in enumerate(self.words)}
    if len(self._index) != len(self.words):
      raise ValueError('duplicate words in the vocabulary')

  @classmethod
  def build(cls, sentences: Iterable[Sequence[str]], size: int, min_count: int = 1) -> Vocabulary:
    """Keeps the ``size`` most frequent tokens with at least ``min_count`` occurrences.

    Args:
      sentences: token lists (for instance ``tokenize`` of each sentence).
      size: the number of ordinary words ``K``; ``len(vocab) == K + 3`` at most.
      min_count: words seen fewer times are left out (they map to ``<unk>``).

    Returns:
      The vocabulary; ranking by count, ties alphabetical.
    """
    counter = collections.Counter()
    for tokens in sentences:
      counter.update(tokens)
    for r in RESERVED:
      counter.pop(r, None)
    ranked = sorted((item for item in counter.items() if item[1] >= min_count),
                    key=lambda wc: (-wc[1], wc[0]))[:size]  # fmt: skip
    return cls([w for w, _ in ranked], [c for _, c in ranked])

  def __len__(self) -> int:
    return len(self.words)

  def __contains__(self, word: str) -> bool:
    return word in self._index

  def token_to_id(self, token: str) -> int:
    """The id of ``token``, or ``UNK_ID`` when it is not in the vocabulary."""
    return self._index.get(token, UNK_ID)

  def id_to_token(self, i: int) -> str:
    """The token with id ``i``."""
    return self.words[int(i)]

  def encode(
    self, tokens: Sequence[str], add_eos: bool = False, max_length: int | None = None
  ) -> np.ndarray:
    """Token ids ``int32[n]`` of ``tokens``; unknown words map to ``UNK_ID``.

    Args:
      tokens: the tokens of one sentence.
      add_eos: append ``EOS_ID`` (decoder targets end with it).
      max_length: keep at most this many ids in all; the words are cut, and the
        end-of-sentence id, when asked for, is kept last.

    Returns:
      ``int32[n]`` with ``n <= max_length`` when it is given.
    """
    ids = [self._index.get(t, UNK_ID) for t in tokens]
    if max_length is not None:
      if max_length < 1:
        raise ValueError(f'max_length must be >= 1, got {max_length}')
      ids = ids[: max_length - 1] if add_eos else ids[:max_length]
    if add_eos:
      ids.append(EOS_ID)
    return np.asarray(ids, dtype=np.int32)

  def decode(self, ids: Iterable[int], strip: bool = True) -> list[str]:
    """The tokens of ``ids``; with ``strip``, stops at the first ``<eos>``/``<pad>``."""
    out = []
    for i in ids:
      i = int(i)
      if strip and i in (PAD_ID, EOS_ID):
        break
      out.append(self.words[i])
    return out

  def to_json(self) -> dict:
    """A JSON-serializable dict (format tag, reserved tokens, words, counts)."""
    return {
      'format': self.FORMAT,
      'reserved': list(RESERVED),
      'words': self.words[len(RESERVED) :],
      'counts': self.counts,
    }

  @classmethod
  def from_json(cls, obj: dict) -> Vocabulary:
    """Inverse of :meth:`to_json`; checks the format tag and the reserved tokens."""
    if obj.get('format') != cls.FORMAT:
      raise ValueError(f'not a {cls.FORMAT} vocabulary: format={obj.get("format")!r}')
    if tuple(obj['reserved']) != RESERVED:
      raise ValueError(f'reserved tokens {obj["reserved"]} differ from {list(RESERVED)}')
    return cls(obj['words'], obj.get('counts'))

  def save(self, path: str | os.PathLike) -> None:
    """Writes the vocabulary as JSON (UTF-8) to ``path``."""
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(self.to_json(), f, ensure_ascii=False)

  @classmethod
  def load(cls, path: str | os.PathLike) -> Vocabulary:
    """Reads a vocabulary written by :meth:`save`."""
    with open(path, encoding='utf-8') as f:
      return cls.from_json(json.load(f))

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocabulary) and self.words == other.words

  def __repr__(self) -> str:
    return f'Vocabulary({len(self.words)} ids: {self.words[3:8]}...)'


# ----------------------------------------------------------------------------------------
# Batching.


def bucket_boundaries(max_length: int = 30, width: int = 5) -> tuple[int, ...]:
  """Padded lengths ``(width, 2 width, ..., max_length)``; the last is ``max_length``."""
  bounds = list(range(width, max_length, width)) + [max_length]
  return tuple(bounds)


def bucket_length(length: int, boundaries: Sequence[int]) -> int:
  """The smallest boundary ``>= length``; lengths past the last boundary get the last."""
  for b in boundaries:
    if length <= b:
      return int(b)
  return int(boundaries[-1])


def pad_batch(
  sequences: Sequence[Sequence[int]],
  length: int | None = None,
  max_length: int | None = None,
  boundaries: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Pads (and truncates) id sequences into one batch.

  Args:
    sequences: ``B`` sequences of token ids.
    length: the padded length ``T``; by default the bucket (``boundaries``) of the longest
      (truncated) sequence, or that length itself without boundaries.
    max_length: cut every sequence to at most this many ids first.
    boundaries: bucket lengths (:func:`bucket_boundaries`) used when ``length`` is None.

  Returns:
    ``(ids, lengths)``: ``int32[B, T]`` with ``PAD_ID`` at ``t >= lengths[b]``, and
    ``int32[B]`` the kept lengths (``min(len, max_length, T)``).
  """
  seqs = [np.asarray(s, dtype=np.int32)[:max_length] for s in sequences]
  lengths = np.array([len(s) for s in seqs], dtype=np.int32)
  longest = int(lengths.max(initial=0))
  if length is None:
    length = bucket_length(longest, boundaries) if boundaries else longest
  ids = np.full((len(seqs), length), PAD_ID, dtype=np.int32)
  for b, s in enumerate(seqs):
    s = s[:length]
    ids[b, : len(s)] = s
  return ids, np.minimum(lengths, length).astype(np.int32)


def length_batches(
  lengths: Sequence[int],
  batch_size: int,
  boundaries: Sequence[int],
  seed: int | None = 0,
  drop_remainder: bool = False,
) -> Iterator[np.ndarray]:
  """Indices of batches whose examples fall in the same length bucket (one epoch).

  Examples are grouped by :func:`bucket_length`; inside each bucket they are shuffled
  and cut into batches of ``batch_size``; the batches of all buckets are then shuffled
  together. The same ``seed`` gives the same epoch; ``seed=None`` keeps the data order
  (bucket by bucket, shortest first), for evaluation.

  Args:
    lengths: length of each example (for instance of the current sentence).
    batch_size: examples per batch.
    boundaries: bucket lengths, ascending.
    seed: shuffling seed, or None for no shuffling.
    drop_remainder: drop each bucket's last, smaller batch (fixed batch shapes).

  Returns:
    An iterator of ``int64[b]`` index arrays, ``b <= batch_size``; every example appears
    at most once per epoch (exactly once unless ``drop_remainder``).
  """
  lengths = np.asarray(lengths)
  buckets = np.array([bucket_length(int(n), boundaries) for n in lengths], dtype=np.int64)
  rng = None if seed is None else np.random.default_rng(seed)
  batches = []
  for b in sorted(set(buckets.tolist())):
    idx = np.flatnonzero(buckets == b)
    if rng is not None:
      idx = rng.permutation(idx)
    for start in range(0, len(idx), batch_size):
      chunk = idx[start : start + batch_size]
      if drop_remainder and len(chunk) < batch_size:
        continue
      batches.append(chunk)
  order = range(len(batches)) if rng is None else rng.permutation(len(batches))
  for i in order:
    yield batches[i]


def batch_sentences(
  sequences: Sequence[Sequence[int]],
  batch_size: int,
  max_length: int = 30,
  boundaries: Sequence[int] | None = None,
  seed: int | None = 0,
  drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """One epoch of bucketed, padded batches of id sequences.

  Args:
    sequences: token id sequences (``Vocabulary.encode`` of each sentence).
    batch_size: sequences per batch.
    max_length: sequences are cut to this many ids.
    boundaries: bucket lengths; default ``bucket_boundaries(max_length)``.
    seed: shuffling seed (None keeps the order; see :func:`length_batches`).
    drop_remainder: drop incomplete batches.

  Yields:
    ``(index, ids, lengths)``: ``int64[B]`` positions in ``sequences``, ``int32[B, T]``
    padded ids with ``T`` the batch's bucket length, ``int32[B]`` lengths.
  """
  boundaries = boundaries or bucket_boundaries(max_length)
  lengths = [min(len(s), max_length) for s in sequences]
  for index in length_batches(lengths, batch_size, boundaries, seed, drop_remainder):
    ids, lens = pad_batch([sequences[i] for i in index], max_length=max_length,
                          boundaries=boundaries)  # fmt: skip
    yield index, ids, lens
