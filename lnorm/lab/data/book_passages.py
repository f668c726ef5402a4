"""Book-passage retrieval: a stand-in for COCO caption-image retrieval built from real books.

Not the paper's data, and the "image" side is synthetic. The layer-norm paper's §6.1
retrieves MSCOCO images from captions (and captions from images) with order embeddings;
COCO and its VGG features are not on these machines. This module builds a task of the
same shape from the public-domain books of ``../shared/data/books``
(:mod:`lnorm.lab.data.books` reads and splits them into sentences):

* an "image" is a passage of ``k = 5`` consecutive sentences of one book (a book of ``n``
  sentences gives ``n // 5`` passages; the last ``n % 5`` sentences are dropped);
* its "captions" are those 5 sentences, in order, so captions ``5i .. 5i+4`` belong to
  passage ``i`` exactly as COCO's captions belong to their image;
* its "image features" are a fixed, **synthetic** 4096-d vector: the hashed TF-IDF of the
  passage's tokens (:func:`lnorm.lab.text.tokenize`), L2-normalised per row, standing in
  for the L2-normalised 4096-d VGG features. Token ``w`` falls in bucket
  ``crc32(utf8(w)) mod 4096`` (a stable hash: Python's ``hash`` is salted per process);
  a passage's value in bucket ``b`` is ``count_b * idf_b`` with the smoothed
  ``idf_b = ln((1 + N) / (1 + df_b)) + 1`` of scikit-learn, ``N`` the number of training
  passages and ``df_b`` how many of them hit bucket ``b`` (the training split's idf serves
  every split). Unsigned hashing: the features are non-negative like ReLU features.
* whole books are held out: the ``dev_books`` and ``test_books`` (names without ``.txt``)
  make the dev and test splits, all other books the training split, so no passage, and no
  sentence, of a dev or test book is seen in training.

Because the captions' own words make up the "image" vector, this is an easier, lexical
retrieval task than COCO: its numbers measure the training pipeline (encoder, order
loss, optimizer, metrics) on real text, not image understanding, and are never to be read
as the paper's.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence

import numpy as np
import scipy.sparse

from lnorm.lab import text as text_lib
from lnorm.lab.data import books

SENTENCES_PER_PASSAGE = 5
FEATURE_DIM = 4096
#: Held-out books (file names without .txt): 1,416 passages for dev (one 1,000-passage
#: fold), 2,684 for test (two folds); a novel and a second author in each.
DEV_BOOKS = ('persuasion', 'chesterton-thursday')
TEST_BOOKS = ('mansfieldpark', 'chesterton-brown', 'shakespeare-hamlet')


def passages(sentences: Sequence[str], k: int = SENTENCES_PER_PASSAGE) -> list[list[str]]:
  """Consecutive groups of ``k`` sentences; the last ``len(sentences) % k`` are dropped."""
  return [list(sentences[i : i + k]) for i in range(0, len(sentences) - k + 1, k)]


def token_bucket(token: str, dim: int = FEATURE_DIM) -> int:
  """The hash bucket of a token: ``crc32(utf8(token)) mod dim``."""
  return zlib.crc32(token.encode('utf-8')) % dim


def hashed_counts(docs: Sequence[Sequence[str]], dim: int = FEATURE_DIM) -> scipy.sparse.csr_matrix:
  """Token counts per hash bucket: float32 CSR ``[len(docs), dim]`` (duplicates summed)."""
  rows, cols = [], []
  for i, tokens in enumerate(docs):
    rows.extend([i] * len(tokens))
    cols.extend(token_bucket(t, dim) for t in tokens)
  data = np.ones(len(rows), np.float32)
  counts = scipy.sparse.csr_matrix((data, (rows, cols)), shape=(len(docs), dim), dtype=np.float32)
  counts.sum_duplicates()
  return counts


def smoothed_idf(counts: scipy.sparse.csr_matrix) -> np.ndarray:
  """``ln((1 + N) / (1 + df)) + 1`` per bucket: float64 ``[dim]`` (``N`` = rows of ``counts``)."""
  df = np.bincount(counts.indices, minlength=counts.shape[1]).astype(np.float64)
  return np.log((1.0 + counts.shape[0]) / (1.0 + df)) + 1.0


def tfidf_features(counts: scipy.sparse.csr_matrix, idf: np.ndarray) -> scipy.sparse.csr_matrix:
  """``counts * idf``, each row scaled to unit L2 norm (all-zero rows stay zero): float32 CSR."""
  weighted = counts.multiply(idf[None, :]).tocsr().astype(np.float64)
  norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
  scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
  return scipy.sparse.csr_matrix(scipy.sparse.diags(scale) @ weighted, dtype=np.float32)


def read_book_passages(
  books_dir: str | os.PathLike, layout: str = 'auto', k: int = SENTENCES_PER_PASSAGE
) -> dict[str, list[list[str]]]:
  """``{book name: passages}`` of every book under ``books_dir`` (names without ``.txt``)."""
  out = {}
  for path in books.book_files(books_dir):
    out[books.book_name(path, books_dir)] = passages(books.book_sentences(path, layout), k)
  return out


def build_splits(
  by_book: dict[str, list[list[str]]],
  dev_books: Sequence[str] = DEV_BOOKS,
  test_books: Sequence[str] = TEST_BOOKS,
  dim: int = FEATURE_DIM,
) -> dict[str, dict]:
  """The three splits from passages grouped by book.

  Args:
    by_book: ``{book: [[sentence] * k] * n}`` (:func:`read_book_passages`).
    dev_books, test_books: the held-out books (disjoint); every other book trains.
    dim: the feature width.

  Returns:
    ``{'train', 'dev', 'test'}``, each ``{'captions': list[str] (k N sentences, passage by
    passage), 'tokens': list[list[str]] (their tokens), 'images': float32 CSR [N, dim]
    (hashed TF-IDF, unit rows), 'books': list[str] (N, the book of each passage)}``;
    books in sorted order, passages in book order.

  Raises:
    ValueError: an unknown or repeated held-out book (the message lists the books), or no
      book left for training.
  """
  names = sorted(by_book)
  held = list(dev_books) + list(test_books)
  unknown = [b for b in held if b not in by_book]
  if unknown:
    raise ValueError(f'unknown books {unknown}; the books are: {", ".join(names)}.')
  if len(set(held)) != len(held):
    raise ValueError(f'a book is held out twice: dev_books={dev_books}, test_books={test_books}.')
  members = {
    'train': [b for b in names if b not in held],
    'dev': list(dev_books),
    'test': list(test_books),
  }
  if not members['train']:
    raise ValueError('no book is left for training; hold out fewer books.')
  splits = {}
  for split, which in members.items():
    group = [(b, p) for b in which for p in by_book[b]]
    captions = [s for _, p in group for s in p]
    tokens = [text_lib.tokenize(s) for s in captions]
    k = len(group[0][1]) if group else SENTENCES_PER_PASSAGE
    passage_tokens = [sum(tokens[k * i : k * (i + 1)], []) for i in range(len(group))]
    splits[split] = {
      'captions': captions,
      'tokens': tokens,
      'counts': hashed_counts(passage_tokens, dim),
      'books': [b for b, _ in group],
    }
  idf = smoothed_idf(splits['train']['counts'])
  for split in splits.values():
    split['images'] = tfidf_features(split.pop('counts'), idf)
  return splits


def load_book_passages(
  books_dir: str | os.PathLike,
  dev_books: Sequence[str] = DEV_BOOKS,
  test_books: Sequence[str] = TEST_BOOKS,
  layout: str = 'auto',
  k: int = SENTENCES_PER_PASSAGE,
  dim: int = FEATURE_DIM,
) -> dict[str, dict]:
  """:func:`build_splits` of the books under ``books_dir`` (module docstring)."""
  return build_splits(read_book_passages(books_dir, layout, k), dev_books, test_books, dim)
