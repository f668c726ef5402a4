r"""Cloze-style question answering data: the CNN corpus's two formats, and a books stand-in.

The paper's §6.2 (Figure 2) trains an attentive reader on the CNN corpus of Hermann et
al. (2015), as preprocessed by Cooijmans et al. (2016). Three sources, one encoded form
(:class:`QAData`):

**DeepMind ``.question`` files** (the released corpus, ``cnn/questions/``)::

  <data_dir>/training/<name>.question
  <data_dir>/validation/<name>.question
  <data_dir>/test/<name>.question

Each file, lines separated by ``\n``::

  http://web.archive.org/web/...              the story's URL
  (blank)
  @entity0 said the @entity1 ...               the context: lower-cased tokens, spaces
  (blank)
  @placeholder was seen ...                    the question: exactly one @placeholder
  (blank)
  @entity1                                     the answer: one @entityN
  (blank)
  @entity0:Barack Obama                        one @entityN:Name line per entity
  @entity1:Hawaii

:func:`parse_question` reads one (a malformed file raises :class:`MalformedQuestionError`
naming the file and what is wrong), :func:`read_questions` a split, :func:`encode_questions`
turns splits into ids with a :class:`lnorm.lab.text.Vocabulary` built on the training
split (every ``@entityN`` seen and ``@placeholder`` always kept, then the most frequent
words). An answer that does not occur in its (possibly truncated) context is counted
(``QAData.stats``), not an error: the model may still guess it from the vocabulary.

**Cooijmans et al.'s top-4 pickles** (each passage cut to its 4 sentences most relevant to
the question), in one directory::

  train4_pass.pkl  train4_qs.pkl  train4_ans.pkl
  valid4_pass.pkl  valid4_qs.pkl  valid4_ans.pkl
  dict.pkl                                      word -> id; ids 0-3: NIL, EOS, UNK, NUM

Python 2 pickles: lists (one entry per example) of id lists for passages and questions,
answers as ids or one-id lists; :func:`read_top4` loads them with ``encoding='latin1'``
and accepts ``bytes`` or ``str`` words in ``dict.pkl``. The ids are used as they are.

**The books cloze stand-in** (:func:`build_books_cloze`, ``scripts/make_books_cloze.py``):
the CNN corpus is not available here, so a cloze task of the same shape is built from the
public-domain books of ``../shared/data/books``. It is a stand-in, not the paper's data:
its numbers are never the paper's. How it is made:

1. Each book (Gutenberg header stripped, :mod:`lnorm.lab.data.books`) is cut into
   sentences and tokens (:func:`lnorm.lab.text.tokenize`, case kept for step 2).
2. Named entities, per book (:func:`find_entities`): a word (letters only, two or more)
   is an entity when at least ``min_entity_count`` of its occurrences are *mid-sentence*
   (the previous token is a word or a comma, so sentence starts and quotation starts do
   not count) and at least ``min_capitalised`` (0.9) of those are capitalised. ``I``,
   interjections (``O``, ``Oh``, ``Ah``) and titles (``Mr``, ``Mrs``, ...) never are.
   Multi-word names stay separate entities (``Frank``, ``Churchill``).
3. Examples (:func:`cloze_examples`): the sentence ``q`` (3 to ``max_query_tokens``
   tokens) of a book is a query when one of its entities occurs exactly once in it and at
   least once in the ``context_sentences`` (20) sentences before it. Each such entity in
   turn is the answer of one question and becomes ``@placeholder`` there (as Hermann et
   al. made one question per entity of a summary point). Queries are taken every
   ``stride`` sentences. Every entity of the example is replaced by
   ``@entityK``, ``K`` from a fresh random permutation of ``0..n-1`` per example
   (``n`` entities in it), so an id carries no meaning across examples, as in CNN.
4. ``context='top4'`` keeps, of the 20 context sentences, the 4 with the largest overlap
   with the query (distinct lower-cased tokens that are not stopwords or punctuation, the
   placeholder excluded, so the answer never guides the choice; ties go to the sentence
   nearer the query), in their original order; an example whose answer is not among
   them is dropped (counted). ``context='full'`` keeps all 20.
5. Split by book: whole books for validation (:data:`BOOKS_VALID`) and test
   (:data:`BOOKS_TEST`), the rest for training. Written as ``.question`` files (URL
   ``books://<book>/<q>/<k>``, the ``k``-th answer of sentence ``q``), lower-cased, so
   :func:`read_questions` serves both corpora. The entity numbers are drawn from
   ``numpy.random.default_rng([seed, crc32(book), q, k])``: the same books and seed give
   the same bytes.

:class:`CnnQuestions` is the ``tensorflow_datasets`` builder over the ``.question``
layout (``manual_dir`` = the directory holding ``training/``, ``validation/``, ``test/``),
written as ArrayRecord and read back without TensorFlow.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pathlib
import pickle
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from lnorm.lab import text as text_lib

#: The split folders of the DeepMind corpus, and the tfds split each becomes.
SPLITS = ('training', 'validation', 'test')
TFDS_SPLITS = {'training': 'train', 'validation': 'validation', 'test': 'test'}
PLACEHOLDER = '@placeholder'
ENTITY_PREFIX = '@entity'
_ENTITY = re.compile(r'@entity(\d+)')

#: The top-4 pickles: split -> file prefix, and the ids reserved by their dictionary.
TOP4_SPLITS = {'train': 'train4', 'valid': 'valid4', 'test': 'test4'}
TOP4_PARTS = ('pass', 'qs', 'ans')
TOP4_DICT = 'dict.pkl'
TOP4_RESERVED = ('NIL', 'EOS', 'UNK', 'NUM')

#: The books stand-in's split: whole books held out (names as in ../shared/data/books).
BOOKS_VALID = ('persuasion', 'chesterton-brown')
BOOKS_TEST = ('northangerabbey', 'chesterton-thursday')
CONTEXTS = ('full', 'top4')
BUILD_FILE = 'build.json'
#: The recipe's version, written into build.json: a stand-in built by another is refused.
CLOZE_VERSION = 2

# A short English stopword list (the words too common to say which sentence is relevant).
STOPWORDS = frozenset(
  """a about above after again against all am an and any are as at be because been before
  being below between both but by can could did do does doing down during each few for from
  further had has have having he her here hers herself him himself his how i if in into is it
  its itself just me more most my myself no nor not now of off on once only or other our ours
  ourselves out over own same she should so some such than that the their theirs them
  themselves then there these they this those through to too under until up very was we were
  what when where which while who whom why will with would you your yours yourself yourselves
  shall may might must upon thee thou thy thine ye o oh said 's n't 'll 'd 're 've 'm""".split()  # noqa: SIM905
)
# Capitalised words that are not names even when always capitalised mid-sentence.
_NOT_ENTITIES = frozenset({'i', 'o', 'oh', 'ah'}) | text_lib.ABBREVIATIONS


class MalformedQuestionError(ValueError):
  """A ``.question`` file or a top-4 pickle that does not follow its format."""


# ----------------------------------------------------------------------------------------
# The DeepMind .question format.


@dataclasses.dataclass(frozen=True)
class Question:
  """One cloze question.

  Attributes:
    url: the source's URL (first line).
    context: the document's tokens.
    question: the question's tokens; exactly one is ``@placeholder``.
    answer: the answer, an ``@entityN`` token.
    entities: ``{'@entityN': 'Name'}`` from the file's last lines.
  """

  url: str
  context: tuple[str, ...]
  question: tuple[str, ...]
  answer: str
  entities: dict[str, str]


def parse_question(text: str, source: str = '<string>') -> Question:
  """Parses the contents of one ``.question`` file (module docstring).

  Args:
    text: the file's text (``\\n`` or ``\\r\\n`` line ends; a final newline optional).
    source: the file's name, for error messages.

  Raises:
    MalformedQuestionError: naming ``source`` and what is wrong.
  """
  lines = text.replace('\r\n', '\n').split('\n')
  while lines and not lines[-1].strip():
    lines.pop()

  def bad(what: str) -> MalformedQuestionError:
    return MalformedQuestionError(
      f'{source}: {what}; a .question file holds URL, blank, context, blank, question, '
      'blank, answer, blank, then @entityN:Name lines.'
    )

  if len(lines) < 7:
    raise bad(f'only {len(lines)} non-empty-trailing lines, expected at least 7')
  for i in (1, 3, 5):
    if lines[i].strip():
      raise bad(f'line {i + 1} should be blank, got {lines[i][:40]!r}')
  if len(lines) > 7 and lines[7].strip():
    raise bad(f'line 8 should be blank, got {lines[7][:40]!r}')
  context, question = lines[2].split(), lines[4].split()
  if not context:
    raise bad('the context (line 3) is empty')
  n = question.count(PLACEHOLDER)
  if n != 1:
    raise bad(f'the question (line 5) holds {n} {PLACEHOLDER} tokens, expected exactly 1')
  answer = lines[6].strip()
  if not _ENTITY.fullmatch(answer):
    raise bad(f'the answer (line 7) is {answer[:40]!r}, expected one @entityN token')
  entities = {}
  for i, line in enumerate(lines[8:], start=9):
    key, sep, name = line.partition(':')
    if not sep or not _ENTITY.fullmatch(key.strip()):
      raise bad(f'line {i} is {line[:40]!r}, expected @entityN:Name')
    entities[key.strip()] = name.strip()
  return Question(lines[0].strip(), tuple(context), tuple(question), answer, entities)


def format_question(q: Question) -> str:
  """The ``.question`` text of ``q`` (what :func:`parse_question` reads back)."""
  names = ''.join(f'{k}:{v}\n' for k, v in q.entities.items())
  return f'{q.url}\n\n{" ".join(q.context)}\n\n{" ".join(q.question)}\n\n{q.answer}\n\n{names}'


def question_files(data_dir: str | os.PathLike, split: str) -> list[pathlib.Path]:
  """The sorted ``*.question`` files of ``<data_dir>/<split>``; a clear error if none."""
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}; got {split!r}.')
  folder = pathlib.Path(data_dir).expanduser() / split
  if not folder.is_dir():
    raise FileNotFoundError(
      f'no {split}/ folder in {str(pathlib.Path(data_dir))!r}: the question data set needs '
      f'{", ".join(s + "/" for s in SPLITS)} folders of .question files (DeepMind layout).'
    )
  files = sorted(folder.glob('*.question'))
  if not files:
    raise FileNotFoundError(f'no *.question files in {str(folder)!r}.')
  return files


def read_questions(
  data_dir: str | os.PathLike, split: str, max_examples: int = 0
) -> list[Question]:
  """The questions of one split, in file-name order (the first ``max_examples``; 0: all)."""
  files = question_files(data_dir, split)
  if max_examples:
    files = files[:max_examples]
  out = []
  for path in files:
    try:
      text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError:
      text = path.read_text(encoding='latin-1')
    out.append(parse_question(text, str(path)))
  return out


def available_splits(data_dir: str | os.PathLike) -> list[str]:
  """The splits of :data:`SPLITS` that ``data_dir`` has a folder for."""
  root = pathlib.Path(data_dir).expanduser()
  return [s for s in SPLITS if (root / s).is_dir()]


# ----------------------------------------------------------------------------------------
# The encoded form every source ends in.


@dataclasses.dataclass
class QASplit:
  """One split as ids.

  Attributes:
    docs: ``N`` arrays ``int32[len_i]``, the documents (never empty).
    queries: ``N`` arrays ``int32[len_i]``, each with one placeholder id.
    answers: ``int32[N]``, the answer ids.
  """

  docs: list[np.ndarray]
  queries: list[np.ndarray]
  answers: np.ndarray

  def __len__(self) -> int:
    return len(self.answers)

  def subset(self, index: Sequence[int]) -> QASplit:
    return QASplit([self.docs[i] for i in index], [self.queries[i] for i in index],
                   self.answers[np.asarray(index, np.int64)])  # fmt: skip


@dataclasses.dataclass
class QAData:
  """Question-answering splits over one vocabulary.

  Attributes:
    words: id -> word (``len(words)`` is the output softmax's size).
    entity_ids: ``int32[E]`` ids of the ``@entityN`` words (what training permutes).
    placeholder_id: the id of ``@placeholder``.
    pad_id: the id padding is written with (never a real token of a document).
    splits: ``{'train', 'valid'[, 'test']}`` -> :class:`QASplit`.
    stats: per split, ``examples`` (kept), ``answer_absent`` (answers not in their
      context, after truncation), ``dropped_long_query`` and ``dropped_long_doc``
      (examples left out for a question or a document over the limit).
  """

  words: list[str]
  entity_ids: np.ndarray
  placeholder_id: int
  pad_id: int
  splits: dict[str, QASplit]
  stats: dict[str, dict[str, int]]


def entity_number(token: str) -> int | None:
  """``N`` of an ``@entityN`` token, else None."""
  m = _ENTITY.fullmatch(token)
  return int(m.group(1)) if m else None


def question_vocabulary(
  train: Iterable[Question], size: int, others: Iterable[Question] = ()
) -> text_lib.Vocabulary:
  """The vocabulary of :func:`encode_questions`.

  ``<pad>, <eos>, <unk>``, then ``@entity0 .. @entityM`` (``M`` the largest number in any
  of ``train`` and ``others``, so no entity is ever unknown), ``@placeholder``, then the
  ``size`` most frequent other tokens of the training contexts and questions (0: all),
  ties alphabetical.
  """
  counts: collections.Counter = collections.Counter()
  top = -1
  for q in train:
    counts.update(q.context)
    counts.update(q.question)
    top = max(
      [top, *(entity_number(t) for t in (q.answer, *q.entities) if entity_number(t) is not None)]
    )
  for q in others:
    top = max(
      [top, *(entity_number(t) for t in (q.answer, *q.entities) if entity_number(t) is not None)]
    )
  for t in list(counts):
    n = entity_number(t)
    if n is not None:
      top = max(top, n)
      del counts[t]
  counts.pop(PLACEHOLDER, None)
  for r in text_lib.RESERVED:
    counts.pop(r, None)
  ranked = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
  if size:
    ranked = ranked[:size]
  special = [f'{ENTITY_PREFIX}{i}' for i in range(top + 1)] + [PLACEHOLDER]
  return text_lib.Vocabulary(special + [w for w, _ in ranked])


#: What happens to documents longer than ``max_doc_len``.
LONG_DOCS = ('truncate', 'drop')


def _finish_split(
  docs: list[np.ndarray],
  queries: list[np.ndarray],
  answers: list[int],
  max_doc_len: int,
  max_query_len: int,
  long_docs: str = 'truncate',
) -> tuple[QASplit, dict[str, int]]:
  """Cuts or drops long documents, drops long queries, counts answers absent from the context."""
  if long_docs not in LONG_DOCS:
    raise ValueError(f'long_docs must be one of {LONG_DOCS}; got {long_docs!r}.')
  keep_d, keep_q, keep_a = [], [], []
  absent = dropped = dropped_doc = 0
  for d, q, a in zip(docs, queries, answers, strict=True):
    if max_query_len and len(q) > max_query_len:
      dropped += 1
      continue
    if max_doc_len and len(d) > max_doc_len and long_docs == 'drop':
      dropped_doc += 1
      continue
    d = d[:max_doc_len] if max_doc_len else d
    absent += int(not np.any(d == a))
    keep_d.append(np.ascontiguousarray(d, np.int32))
    keep_q.append(np.ascontiguousarray(q, np.int32))
    keep_a.append(a)
  split = QASplit(keep_d, keep_q, np.asarray(keep_a, np.int32))
  stats = {'examples': len(split), 'answer_absent': absent, 'dropped_long_query': dropped}
  return split, dict(stats, dropped_long_doc=dropped_doc)


def encode_questions(
  splits: dict[str, list[Question]],
  vocab_size: int = 0,
  max_doc_len: int = 0,
  max_query_len: int = 0,
  long_docs: str = 'truncate',
) -> QAData:
  """Ids of ``.question`` splits (keys ``train``, ``valid``, ``test``; ``train`` required).

  Args:
    splits: the parsed questions of each split.
    vocab_size: ordinary words kept beside the entities and the placeholder (0: all the
      training split's words); the others become ``<unk>``.
    max_doc_len: documents are cut to this many tokens (0: whole), or dropped.
    max_query_len: examples with longer questions are dropped (0: none).
    long_docs: ``'truncate'`` (cut longer documents) or ``'drop'`` (leave their examples
      out, counted as ``dropped_long_doc``).
  """
  if 'train' not in splits or not splits['train']:
    raise ValueError('encode_questions needs a non-empty train split.')
  others = [q for name, qs in splits.items() if name != 'train' for q in qs]
  vocab = question_vocabulary(splits['train'], vocab_size, others)
  out, stats = {}, {}
  for name, questions in splits.items():
    docs = [vocab.encode(q.context) for q in questions]
    queries = [vocab.encode(q.question) for q in questions]
    answers = [vocab.token_to_id(q.answer) for q in questions]
    out[name], stats[name] = _finish_split(
      docs, queries, answers, max_doc_len, max_query_len, long_docs
    )
  entity_ids = np.asarray([i for i, w in enumerate(vocab.words) if entity_number(w) is not None])
  return QAData(
    words=list(vocab.words),
    entity_ids=entity_ids.astype(np.int32),
    placeholder_id=vocab.token_to_id(PLACEHOLDER),
    pad_id=text_lib.PAD_ID,
    splits=out,
    stats=stats,
  )


def load_question_dir(
  data_dir: str | os.PathLike,
  vocab_size: int = 0,
  max_doc_len: int = 0,
  max_query_len: int = 0,
  max_examples: dict[str, int] | None = None,
  long_docs: str = 'truncate',
) -> QAData:
  """:func:`read_questions` of every split present, then :func:`encode_questions`.

  ``training`` is required; ``validation`` and ``test`` are read when present.
  ``max_examples``: ``{'train': n, ...}`` (the first ``n`` files by name; 0: all).
  """
  max_examples = max_examples or {}
  present = available_splits(data_dir)
  if 'training' not in present:
    question_files(data_dir, 'training')  # Raises the clear error.
  parsed = {}
  for folder in present:
    name = TFDS_SPLITS[folder] if folder != 'validation' else 'valid'
    parsed[name] = read_questions(data_dir, folder, max_examples.get(name, 0))
  return encode_questions(parsed, vocab_size, max_doc_len, max_query_len, long_docs)


# ----------------------------------------------------------------------------------------
# Cooijmans et al.'s top-4 pickles.


def _load_pickle(path: pathlib.Path) -> Any:
  if not path.is_file():
    raise FileNotFoundError(f'missing {path.name} in {str(path.parent)!r}.')
  try:
    with open(path, 'rb') as f:
      return pickle.load(f, encoding='latin1')  # Python 2 str -> str, as the files need.
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise MalformedQuestionError(f'{path}: not a readable pickle ({e}).') from None


def _word(key: Any, path: pathlib.Path) -> str:
  if isinstance(key, bytes):
    try:
      return key.decode('utf-8')
    except UnicodeDecodeError:
      return key.decode('latin-1')
  if isinstance(key, str):
    return key
  raise MalformedQuestionError(f'{path}: a key of type {type(key).__name__}, expected words.')


def read_top4_dict(data_dir: str | os.PathLike) -> dict[str, int]:
  """``dict.pkl``: word -> id, words decoded from ``bytes`` if they are."""
  path = pathlib.Path(data_dir).expanduser() / TOP4_DICT
  raw = _load_pickle(path)
  if not isinstance(raw, dict):
    raise MalformedQuestionError(f'{path}: a {type(raw).__name__}, expected a dict word -> id.')
  out = {}
  for k, v in raw.items():
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
      raise MalformedQuestionError(f'{path}: the id of {k!r} is {v!r}, expected an int >= 0.')
    out[_word(k, path)] = int(v)
  return out


def _id_lists(value: Any, path: pathlib.Path) -> list[np.ndarray]:
  if not isinstance(value, list | tuple | np.ndarray):
    raise MalformedQuestionError(
      f'{path}: a {type(value).__name__}, expected a list with one id list per example.'
    )
  out = []
  for i, item in enumerate(value):
    arr = np.asarray(item)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
      raise MalformedQuestionError(f'{path}: example {i} is not a list of integer ids.')
    out.append(arr.astype(np.int64))
  return out


def read_top4(data_dir: str | os.PathLike, split: str) -> QASplit:
  """One split of the top-4 pickles (``split`` in ``train``, ``valid``, ``test``), as ids.

  Answers may be ids or one-id lists (``ans[i][0]``, as the authors' iterator reads them).
  """
  if split not in TOP4_SPLITS:
    raise ValueError(f'split must be one of {tuple(TOP4_SPLITS)}; got {split!r}.')
  root = pathlib.Path(data_dir).expanduser()
  paths = {p: root / f'{TOP4_SPLITS[split]}_{p}.pkl' for p in TOP4_PARTS}
  docs = _id_lists(_load_pickle(paths['pass']), paths['pass'])
  queries = _id_lists(_load_pickle(paths['qs']), paths['qs'])
  raw = _load_pickle(paths['ans'])
  if not isinstance(raw, list | tuple | np.ndarray):
    raise MalformedQuestionError(f'{paths["ans"]}: expected a list with one answer per example.')
  answers = []
  for i, a in enumerate(raw):
    a = np.asarray(a).reshape(-1)
    if a.size != 1 or not np.issubdtype(a.dtype, np.integer):
      raise MalformedQuestionError(f'{paths["ans"]}: answer {i} is {a.tolist()!r}, not one id.')
    answers.append(int(a[0]))
  counts = {p: n for p, n in zip(TOP4_PARTS, (len(docs), len(queries), len(answers)), strict=True)}
  if len(set(counts.values())) != 1:
    listed = ', '.join(f'{paths[p].name}: {n}' for p, n in counts.items())
    raise MalformedQuestionError(
      f'the {split} pickles hold different numbers of examples ({listed}).'
    )
  for i, d in enumerate(docs):
    if not d.size:
      raise MalformedQuestionError(f'{paths["pass"]}: passage {i} is empty.')
  return QASplit(docs, queries, np.asarray(answers, np.int32))


def load_top4(
  data_dir: str | os.PathLike,
  max_doc_len: int = 0,
  max_query_len: int = 0,
  max_examples: dict[str, int] | None = None,
  long_docs: str = 'truncate',
) -> QAData:
  """The top-4 pickles of ``data_dir`` (``train``, ``valid``, and ``test`` if present).

  The vocabulary is ``dict.pkl``'s (ids as they are; an id without a word is shown as
  ``<id N>``); entity ids are those of its ``@entity`` words; padding uses id 0 (NIL).
  """
  root = pathlib.Path(data_dir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f'no top-4 directory {str(root)!r}.')
  word_ids = read_top4_dict(root)
  names = ['train', 'valid'] + (['test'] if (root / 'test4_pass.pkl').exists() else [])
  raw = {s: read_top4(root, s) for s in names}
  max_examples = max_examples or {}
  size = max(word_ids.values(), default=0) + 1
  for s, split in raw.items():
    if max_examples.get(s):
      raw[s] = split = split.subset(range(min(len(split), max_examples[s])))
    top = max(
      [int(split.answers.max(initial=0))]
      + [int(x.max(initial=0)) for x in split.docs + split.queries]
    )
    size = max(size, top + 1)
  words = [f'<id {i}>' for i in range(size)]
  for w, i in word_ids.items():
    words[i] = w
  for i, w in enumerate(TOP4_RESERVED):
    if words[i].startswith('<id '):
      words[i] = w
  if PLACEHOLDER not in word_ids:
    raise MalformedQuestionError(f'{root / TOP4_DICT}: no {PLACEHOLDER!r} word.')
  entity_ids = np.asarray(sorted(i for w, i in word_ids.items() if ENTITY_PREFIX in w), np.int32)
  if not entity_ids.size:
    raise MalformedQuestionError(f'{root / TOP4_DICT}: no {ENTITY_PREFIX} words.')
  splits, stats = {}, {}
  for s, split in raw.items():
    splits[s], stats[s] = _finish_split(split.docs, split.queries, split.answers.tolist(),
                                        max_doc_len, max_query_len, long_docs)  # fmt: skip
  return QAData(words, entity_ids, word_ids[PLACEHOLDER], 0, splits, stats)


# ----------------------------------------------------------------------------------------
# tfds builder over the .question layout.


class CnnQuestions(tfds.core.GeneratorBasedBuilder):
  """tfds builder of the ``.question`` layout in ``manual_dir`` (module docstring).

  Splits ``train``, ``validation``, ``test`` from the folders ``training/``,
  ``validation/``, ``test/`` present. Features: ``url``, ``context``, ``question``,
  ``answer`` (text; tokens separated by spaces) and ``entities`` (the ``@entityN:Name``
  lines, in file order). Keys are the file names. ArrayRecord by default, so
  ``as_data_source(split)`` reads it without TensorFlow.
  """

  name = 'lnorm_cnn_questions'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Put the DeepMind question data (e.g. cnn/questions) in manual_dir: the folders '
    'training/, validation/, test/ of .question files. The books stand-in built by '
    'scripts/make_books_cloze.py has the same layout.'
  )

  def __init__(self, *, file_format: str = 'array_record', **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description='Cloze questions in the DeepMind .question format (Hermann et al. 2015).',
      features=tfds.features.FeaturesDict(
        {
          'url': tfds.features.Text(),
          'context': tfds.features.Text(),
          'question': tfds.features.Text(),
          'answer': tfds.features.Text(),
          'entities': tfds.features.Sequence(tfds.features.Text()),
        }
      ),
      supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    present = available_splits(root)
    if 'training' not in present:
      question_files(root, 'training')  # Raises the clear error.
    return {TFDS_SPLITS[s]: self._generate_examples(root, s) for s in present}

  def _generate_examples(self, root, split):
    for path in question_files(root, split):
      q = parse_question(path.read_text(encoding='utf-8'), str(path))
      yield (
        path.stem,
        {
          'url': q.url,
          'context': ' '.join(q.context),
          'question': ' '.join(q.question),
          'answer': q.answer,
          'entities': [f'{k}:{v}' for k, v in q.entities.items()],
        },
      )


def prepare(manual_dir: str | os.PathLike, data_dir: str | os.PathLike) -> CnnQuestions:
  """Builds :class:`CnnQuestions` from ``manual_dir`` into ``data_dir`` (once); returns it."""
  builder = CnnQuestions(data_dir=os.fspath(data_dir))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  )
  return builder


# ----------------------------------------------------------------------------------------
# The books cloze stand-in.


def _is_word(token: str) -> bool:
  return token[:1].isalnum()


def find_entities(
  sentences: Sequence[Sequence[str]], min_count: int = 5, min_capitalised: float = 0.9
) -> set[str]:
  """The named entities of one book by the capitalisation heuristic (module docstring).

  Args:
    sentences: the book's sentences as cased tokens.
    min_count: mid-sentence occurrences a word needs.
    min_capitalised: the fraction of those that must be capitalised.

  Returns:
    The entities, lower-cased.
  """
  mid = collections.Counter()
  capitalised = collections.Counter()
  for tokens in sentences:
    for prev, tok in zip(tokens[:-1], tokens[1:], strict=True):
      if not (tok.isalpha() and len(tok) >= 2) or not (_is_word(prev) or prev == ','):
        continue
      low = tok.lower()
      mid[low] += 1
      capitalised[low] += tok[0].isupper()
  return {
    w
    for w, n in mid.items()
    if n >= min_count and capitalised[w] >= min_capitalised * n and w not in _NOT_ENTITIES
  }


def _content_words(tokens: Iterable[str]) -> set[str]:
  return {t for t in tokens if _is_word(t) and t not in STOPWORDS and t != PLACEHOLDER}


def select_top_sentences(
  context: Sequence[Sequence[str]], query: Sequence[str], k: int = 4
) -> list[int]:
  """Indices (ascending) of the ``k`` sentences sharing most content words with ``query``.

  Tokens are compared lower-cased; stopwords, punctuation and ``@placeholder`` do not
  count; ties go to the later sentence (nearer the query).
  """
  q = _content_words(t.lower() for t in query)
  scores = [len(q & _content_words(t.lower() for t in s)) for s in context]
  order = sorted(range(len(context)), key=lambda i: (-scores[i], -i))
  return sorted(order[:k])


def _book_seed(name: str) -> int:
  return zlib.crc32(name.encode('utf-8'))


def cloze_examples(
  book: str,
  sentences: Sequence[Sequence[str]],
  entities: set[str],
  seed: int = 0,
  context: str = 'full',
  context_sentences: int = 20,
  stride: int = 1,
  max_query_tokens: int = 30,
  stats: collections.Counter | None = None,
) -> Iterator[Question]:
  """The cloze questions of one book (module docstring, steps 3-4).

  Args:
    book: the book's name (the URL and the seed use it).
    sentences: the book's sentences as cased tokens.
    entities: its entities, lower-cased (:func:`find_entities`).
    seed: the build's seed.
    context: ``'full'`` or ``'top4'``.
    context_sentences: sentences before the query that form the context.
    stride: a query every this many sentences.
    max_query_tokens: longer query sentences are skipped.
    stats: a Counter that receives ``candidates`` (query sentences looked at),
      ``no_answer`` (none with an entity usable as the answer), ``answer_not_in_top4``
      (questions dropped), ``examples`` (questions made).

  Yields:
    :class:`Question` s, lower-cased, entities as ``@entityK``.
  """
  if context not in CONTEXTS:
    raise ValueError(f'context must be one of {CONTEXTS}; got {context!r}.')
  stats = collections.Counter() if stats is None else stats
  lower = [[t.lower() for t in s] for s in sentences]
  for q in range(context_sentences, len(sentences), stride):
    query = lower[q]
    if not 3 <= len(query) <= max_query_tokens:
      continue
    stats['candidates'] += 1
    window = lower[q - context_sentences : q]
    in_context = {t for s in window for t in s if t in entities}
    counts = collections.Counter(t for t in query if t in entities)
    # In order of appearance in the query.
    choices = [t for t in dict.fromkeys(query) if counts[t] == 1 and t in in_context]
    if not choices:
      stats['no_answer'] += 1
      continue
    for k, answer in enumerate(choices):
      blanked = [PLACEHOLDER if t == answer else t for t in query]
      kept = window
      if context == 'top4':
        kept = [window[i] for i in select_top_sentences(window, blanked, 4)]
        if not any(answer in s for s in kept):
          stats['answer_not_in_top4'] += 1
          continue
      seen: dict[str, None] = {}
      for t in [t for s in kept for t in s] + blanked:
        if t in entities:
          seen.setdefault(t)
      numbers = np.random.default_rng([seed, _book_seed(book), q, k]).permutation(len(seen))
      ids = {e: f'{ENTITY_PREFIX}{int(n)}' for e, n in zip(seen, numbers, strict=True)}
      names = {ids[e]: e.capitalize() for e in sorted(seen, key=lambda e: entity_number(ids[e]))}
      stats['examples'] += 1
      yield Question(
        url=f'books://{book}/{q}/{k}',
        context=tuple(ids.get(t, t) for s in kept for t in s),
        question=tuple(ids.get(t, t) for t in blanked),
        answer=ids[answer],
        entities=names,
      )


def book_split(name: str, valid: Sequence[str], test: Sequence[str]) -> str:
  """``'validation'``, ``'test'`` or ``'training'`` for the book called ``name``."""
  if name in valid:
    return 'validation'
  if name in test:
    return 'test'
  return 'training'


def build_books_cloze(
  books_dir: str | os.PathLike,
  out_dir: str | os.PathLike,
  context: str = 'full',
  seed: int = 0,
  valid_books: Sequence[str] = BOOKS_VALID,
  test_books: Sequence[str] = BOOKS_TEST,
  context_sentences: int = 20,
  stride: int = 1,
  max_query_tokens: int = 30,
  min_entity_count: int = 5,
  min_capitalised: float = 0.9,
) -> dict[str, Any]:
  """Writes the books cloze stand-in as ``.question`` files (module docstring).

  Args:
    books_dir: the books (``*.txt``; e.g. ``../shared/data/books``).
    out_dir: receives ``training/``, ``validation/``, ``test/`` and ``build.json`` (the
      arguments and counts). Existing ``.question`` files there are replaced.
    context, seed, context_sentences, stride, max_query_tokens: see :func:`cloze_examples`.
    valid_books, test_books: the books held out whole (names without ``.txt``).
    min_entity_count, min_capitalised: see :func:`find_entities`.

  Returns:
    What ``build.json`` holds: ``args``, and per split and book the counts.
  """
  from lnorm.lab.data import books as books_lib

  files = books_lib.book_files(books_dir)
  names = [books_lib.book_name(p, books_dir) for p in files]
  unknown = sorted((set(valid_books) | set(test_books)) - set(names))
  if unknown:
    raise ValueError(f'held-out books {unknown} are not in {books_dir!r}; it has {names}.')
  out = pathlib.Path(out_dir)
  for split in SPLITS:
    (out / split).mkdir(parents=True, exist_ok=True)
    for old in (out / split).glob('*.question'):
      old.unlink()
  args = dict(
    version=CLOZE_VERSION,
    context=context, seed=seed, valid_books=list(valid_books), test_books=list(test_books),
    context_sentences=context_sentences, stride=stride, max_query_tokens=max_query_tokens,
    min_entity_count=min_entity_count, min_capitalised=min_capitalised,
  )  # fmt: skip
  report: dict[str, Any] = {'args': args, 'books': {}, 'splits': {s: 0 for s in SPLITS}}
  for path, name in zip(files, names, strict=True):
    sentences = [text_lib.tokenize(s, lower=False) for s in books_lib.book_sentences(path)]
    entities = find_entities(sentences, min_entity_count, min_capitalised)
    split = book_split(name, valid_books, test_books)
    stats: collections.Counter = collections.Counter()
    safe = name.replace('/', '_')
    for q in cloze_examples(name, sentences, entities, seed, context, context_sentences,
                            stride, max_query_tokens, stats):  # fmt: skip
      index, k = q.url.rsplit('/', 2)[1:]
      file_name = f'{safe}-{int(index):06d}-{int(k)}.question'
      (out / split / file_name).write_text(format_question(q))
    report['books'][name] = {'split': split, 'entities': len(entities), **stats}
    report['splits'][split] += stats['examples']
    logging.info('%s (%s): %d examples, %d entities', name, split, stats['examples'], len(entities))
  (out / BUILD_FILE).write_text(json.dumps(report, indent=1, sort_keys=True) + '\n')
  return report


def read_build_args(out_dir: str | os.PathLike) -> dict[str, Any] | None:
  """The ``args`` of the ``build.json`` in ``out_dir`` (None if there is none)."""
  path = pathlib.Path(out_dir) / BUILD_FILE
  return json.loads(path.read_text())['args'] if path.exists() else None
