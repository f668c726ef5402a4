"""SentEval on a bag of fixed random word vectors (and, optionally, pure random vectors).

The baseline every trained sentence encoder should beat, and a check of the harness:
random vectors unrelated to the sentence land at chance, the bag of random word vectors
(a random projection of the bag of words) clearly above it.

  python scripts/senteval_baseline.py --data_dir ../shared/data/senteval
  python scripts/senteval_baseline.py --data_dir ../shared/data/senteval --encoder random \
    --tasks MR --json runs/senteval_random.json
  python scripts/senteval_baseline.py --data_dir ../shared/data/senteval --dim 256 \
    --vocab runs/skip_thoughts/cpu-layer/vocab.json --json runs/senteval_bow_vocab.json

``--vocab`` (a skip-thoughts run's ``vocab.json``) keeps only the words a trained encoder
can see; every other word becomes ``<unk>`` (one shared vector). ``--raw`` fits the
classifiers on raw rather than standardized vectors.

Prints a Markdown table (lnorm.lab.senteval.format_table); --json also writes the results.
"""

import json
import pathlib
import sys
import time

from lnorm.lab import cli, senteval, text
from lnorm.lab.data import senteval as senteval_data


def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', required=True, help='SentEval layout (../shared/data/senteval)')
  parser.add_argument(
    '--encoder', choices=('bow', 'random'), default='bow',
    help='bow: mean of fixed random word vectors; random: vectors unrelated to the text',
  )  # fmt: skip
  parser.add_argument('--dim', type=int, default=300, help='vector size')
  parser.add_argument('--tasks', default=','.join(senteval_data.TASKS), help='comma-separated')
  parser.add_argument('--seed', type=int, default=0, help='folds and word vectors')
  parser.add_argument('--folds', type=int, default=10, help='outer CV folds')
  parser.add_argument('--inner_folds', type=int, default=5, help='inner CV folds choosing C')
  parser.add_argument('--vocab', default=None, help="a run's vocab.json: other words are <unk>")
  parser.add_argument('--raw', action='store_true', help='no feature standardization')
  parser.add_argument('--json', default=None, help='also write the results here')
  args = parser.parse_args(argv)

  if args.encoder == 'bow':
    words = None if args.vocab is None else set(text.Vocabulary.load(args.vocab).words)
    encode = senteval.BagOfRandomWords(dim=args.dim, seed=args.seed, vocabulary=words)
  else:
    encode = senteval.RandomEncoder(dim=args.dim, seed=args.seed)
  tasks = [t.strip().upper() for t in args.tasks.split(',') if t.strip()]
  results = {}
  start = time.perf_counter()
  for task in tasks:
    results[task] = senteval.evaluate_task(
      encode, args.data_dir, task, n_folds=args.folds, inner_folds=args.inner_folds,
      seed=args.seed, standardize=not args.raw,
    )  # fmt: skip
    print(f'{task}: done in {results[task]["seconds"]:.0f}s', file=sys.stderr, flush=True)
  print(f'SentEval, encoder={args.encoder}, dim={args.dim}, seed={args.seed}, '
        f'vocab={args.vocab}, standardize={not args.raw}, '
        f'{time.perf_counter() - start:.0f}s in all')  # fmt: skip
  print(senteval.format_table(results))
  if args.json:
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, 'w') as f:
      json.dump({'args': vars(args), 'results': results}, f, indent=1)


if __name__ == '__main__':
  main()
