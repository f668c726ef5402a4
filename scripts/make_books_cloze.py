"""Builds the books cloze STAND-IN for the CNN corpus, as DeepMind .question files.

  python scripts/make_books_cloze.py --context=top4      # -> data/books_cloze/top4
  python scripts/make_books_cloze.py --context=full      # -> data/books_cloze/full
  python scripts/make_books_cloze.py --books=../shared/data/books --out=/tmp/cloze --seed=1

The recipe (entities by capitalisation, 20 context sentences and the next sentence as the
query, top-4 selection by word overlap, whole books held out for validation and test) is
in :mod:`lnorm.lab.data.cnn_qa`. The output holds ``training/``, ``validation/``,
``test/`` of ``.question`` files and ``build.json`` (the arguments and counts per book);
the same books and arguments give the same bytes. ``data/`` is git-ignored: the stand-in
is never committed. ``configs/attentive_reader.py:data=books`` reads it (and builds it
there itself when it is missing).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from lnorm.lab import workdir as workdir_lib  # noqa: E402
from lnorm.lab.data import cnn_qa  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--books', default=None, help='books dir (default: $LNORM_DATA_DIR/books)')
  parser.add_argument(
    '--out', default=None, help='output dir (default: data/books_cloze/<context>)'
  )
  parser.add_argument('--context', default='top4', choices=cnn_qa.CONTEXTS)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--context_sentences', type=int, default=20)
  parser.add_argument('--stride', type=int, default=1, help='a query every this many sentences')
  parser.add_argument('--max_query_tokens', type=int, default=30)
  parser.add_argument('--min_entity_count', type=int, default=5)
  parser.add_argument('--min_capitalised', type=float, default=0.9)
  parser.add_argument('--valid_books', default=','.join(cnn_qa.BOOKS_VALID))
  parser.add_argument('--test_books', default=','.join(cnn_qa.BOOKS_TEST))
  args = parser.parse_args(argv)
  books = workdir_lib.find_data_dir('books', args.books)
  if not books:
    parser.error('no books found: pass --books=DIR or set $LNORM_DATA_DIR (with books/ in it).')
  out = args.out or str(REPO_ROOT / 'data' / 'books_cloze' / args.context)
  logging.basicConfig(level=logging.INFO, format='%(message)s')
  report = cnn_qa.build_books_cloze(
    books, out, context=args.context, seed=args.seed,
    valid_books=[b for b in args.valid_books.split(',') if b],
    test_books=[b for b in args.test_books.split(',') if b],
    context_sentences=args.context_sentences, stride=args.stride,
    max_query_tokens=args.max_query_tokens, min_entity_count=args.min_entity_count,
    min_capitalised=args.min_capitalised,
  )  # fmt: skip
  print(f'{out}: ' + ', '.join(f'{s} {n}' for s, n in report['splits'].items()) + ' questions')
  return report


if __name__ == '__main__':
  main()
