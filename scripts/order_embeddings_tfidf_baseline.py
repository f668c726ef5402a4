"""The lexical ceiling of the book-passage stand-in: retrieval by hashed TF-IDF cosine, no training.

The stand-in's "image" of a passage is the hashed TF-IDF of its own five sentences
(:mod:`lnorm.lab.data.book_passages`), so embedding each caption the same way (its own
hashed TF-IDF, the training split's idf) and ranking by cosine similarity retrieves almost
perfectly. This script prints those metrics on the dev fold and the test folds, with the
same metric code as the experiment (:func:`experiments.order_embeddings.retrieval_metrics`),
to put the learned models' numbers in context.

Usage::

  python scripts/order_embeddings_tfidf_baseline.py --books_dir ../shared/data/books
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from experiments import order_embeddings as oe  # noqa: E402
from lnorm.lab.data import book_passages as bp  # noqa: E402


def tfidf_retrieval(splits: dict, fold_size: int = 1000, k: int = 5) -> dict[str, dict]:
  """``{split: metrics averaged over its full folds}`` for ``dev`` (1 fold) and ``test``."""
  train = splits['train']
  passages = [
    sum(train['tokens'][k * i : k * (i + 1)], []) for i in range(train['images'].shape[0])
  ]
  dim = train['images'].shape[1]
  idf = bp.smoothed_idf(bp.hashed_counts(passages, dim))
  out = {}
  for split, num_folds in (('dev', 1), ('test', 0)):
    results = []
    for start, stop in oe.fold_bounds(splits[split]['images'].shape[0], fold_size, num_folds):
      images = splits[split]['images'][start:stop].toarray()
      captions = bp.tfidf_features(
        bp.hashed_counts(splits[split]['tokens'][k * start : k * stop], dim), idf
      ).toarray()
      results.append(oe.retrieval_metrics(-(captions @ images.T), k))
    out[split] = {key: float(np.mean([r[key] for r in results])) for key in results[0]}
    out[split]['num_folds'] = len(results)
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--books_dir', default=str(REPO_ROOT.parent / 'shared' / 'data' / 'books'))
  args = parser.parse_args(argv)
  print(json.dumps(tfidf_retrieval(bp.load_book_passages(args.books_dir)), indent=1))


if __name__ == '__main__':
  main()
