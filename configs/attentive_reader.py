r"""The attentive reader, paper §6.2 and Figure 2: LSTM vs BN-LSTM vs LN-LSTM.

Run book (from the repository root, with the venv active):

  # The paper's setting, for a user with the CNN corpus (DeepMind .question folders):
  python -m lnorm.main --config=configs/attentive_reader.py:data=cnn,norm=layer,data_dir=DIR \
      --workdir=runs/attentive_reader/cnn-layer

  # Cooijmans et al.'s top-4 pickles (train4_*.pkl, valid4_*.pkl, dict.pkl in DIR):
  python -m lnorm.main --config=configs/attentive_reader.py:data=top4,norm=batch,data_dir=DIR \
      --workdir=runs/attentive_reader/top4-batch

  # The books cloze STAND-IN at CPU scale (what results/attentive_reader.md shows); the
  # stand-in is built on first use into data/books_cloze/<context>, or beforehand with
  #   python scripts/make_books_cloze.py --context=top4
  for n in none batch layer; do
    python -m lnorm.main --config=configs/attentive_reader.py:data=books,size=cpu,norm=$n \
        --workdir=runs/attentive_reader/books-top4-$n
  done

Args (comma-separated after the colon): ``data`` (cnn|top4|books, default books),
``norm`` (none|layer|batch, default layer), ``size`` (paper|cpu, default: paper for
cnn/top4, cpu for books), ``context`` (top4|full: which books stand-in, default top4),
``data_dir``, ``books_dir``, ``seed``, ``lr`` (0: the size's), ``batch_size`` (0: the
size's), ``steps`` (0: the size's), ``ln_gain`` (1.0; the paper also tried 0.1),
``candidates`` (the candidate-restricted softmax), ``smoke`` (a run of seconds on any
of the data sources: tiny model, few examples).

Sizes:

* ``paper``: the run behind the paper's curves (Cooijmans et al.'s code, branch ``bn``):
  240-d embeddings and LSTMs, dropout 0.5, Adam 8e-5, batch 64, clipping at global norm
  10, validation every 1,000 updates, the whole training vocabulary, documents cut to
  2,000 tokens (the top-4 passages are far shorter), questions up to 100 tokens.
* ``cpu``: the stand-in on two shared CPU cores: 64-d embeddings and LSTMs, batch 32,
  Adam 3e-3 (8e-5 barely moves in the 1,500 updates a CPU run affords; at 1e-3 neither
  an LSTM nor an LN-LSTM left the initial plateau within 600 updates, at 3e-3 the LSTM
  did by ~700), the 4,000 most frequent words, examples with documents over 160 tokens
  left out (cutting them would remove the answer from ~40% of the top-4 contexts; 3,738
  of the 5,392 training questions stay), buckets of 40 tokens, validation on all 952
  remaining validation questions every 100 updates, 1,500 updates (~13 epochs), dropout
  0.5 and clipping at 10 as the paper's run.
"""

from __future__ import annotations

import ml_collections

from lnorm.lab.config_args import check_choice, optimizer_fields, parse_arg

NORMS = ('none', 'batch', 'layer')
DATA = ('cnn', 'top4', 'books')
SIZES = ('paper', 'cpu')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one attentive-reader run; ``arg`` as in the module docstring."""
  a = parse_arg(
    arg,
    data='books',
    norm='layer',
    size='',
    context='top4',
    data_dir=None,
    books_dir=None,
    seed=0,
    lr=0.0,
    batch_size=0,
    steps=0,
    ln_gain=1.0,
    candidates=False,
    smoke=False,
  )
  check_choice('data', a.data, DATA)
  size = a.size or ('cpu' if a.data == 'books' else 'paper')
  check_choice('size', size, SIZES)
  c = ml_collections.ConfigDict()
  c.experiment = 'attentive_reader'
  c.norm = a.norm
  c.seed = a.seed
  c.size = size

  # Data.
  c.data = a.data
  c.context = a.context  # Which books stand-in (data=books): top4 or full.
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.data_dir = a.data_dir  # None: found at run time (see experiments/attentive_reader.py).
  c.books_dir = ml_collections.config_dict.placeholder(str)
  c.books_dir = a.books_dir  # The books the stand-in is built from, if it must be built.
  c.cloze_seed = 0  # The stand-in's build (when it is built on first use): seed, held-out books.
  c.cloze_valid_books = 'persuasion,chesterton-brown'
  c.cloze_test_books = 'northangerabbey,chesterton-thursday'
  c.vocab_size = 0  # Ordinary words beside the entities (0: all; top4 uses dict.pkl).
  c.max_doc_len = 2000
  c.long_docs = 'truncate'  # Or 'drop': leave out examples with longer documents.
  c.max_query_len = 100
  c.doc_bucket_width = 100
  c.num_train = 0  # 0: all.
  c.num_valid = 0
  c.num_test = 0
  c.split_seed = 0

  # Model.
  c.embed_dim = 240
  c.hidden_dim = 240
  c.dropout_rate = 0.5
  c.ln_gain = a.ln_gain
  c.bn_gamma = 0.1
  c.bn_momentum = 0.99
  c.norm_epsilon = 1e-5
  c.candidate_softmax = a.candidates

  # Optimization.
  c.batch_size = a.batch_size or 64
  c.num_epochs = 100
  c.num_steps = a.steps  # 0: num_epochs epochs.
  c.update(optimizer_fields(a.lr or 8e-5, grad_clip_norm=10.0))

  # Loop.
  c.steps_per_call = 8
  c.batches_per_run = 8  # Same-shaped batches kept together: the same as steps_per_call.
  c.log_every_steps = 200
  c.eval_every_steps = 1000
  c.eval_batch_size = 128
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3

  if size == 'cpu':
    c.vocab_size = 4000
    c.max_doc_len = 160
    c.long_docs = 'drop'  # Truncating would cut the answer out of ~40% of the contexts.
    c.max_query_len = 30
    c.doc_bucket_width = 40
    c.embed_dim = c.hidden_dim = 64
    c.batch_size = a.batch_size or 32
    c.learning_rate = a.lr or 3e-3
    c.num_steps = a.steps or 1500
    c.steps_per_call = c.batches_per_run = 4
    c.log_every_steps = 20
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    c.eval_batch_size = 200
  if a.smoke:
    c.vocab_size = 300
    c.max_doc_len = 48
    c.long_docs = 'truncate'
    c.max_query_len = 30
    c.doc_bucket_width = 24
    c.num_train, c.num_valid, c.num_test = 64, 16, 16
    c.embed_dim = c.hidden_dim = 8
    c.batch_size = a.batch_size or 4
    c.learning_rate = a.lr or 1e-3
    c.num_steps = a.steps or 4
    c.steps_per_call = c.batches_per_run = 2
    c.log_every_steps = 2
    c.eval_every_steps = 2
    c.checkpoint_every_steps = 2
    c.eval_batch_size = 16
  return c


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
  """The paper's comparison: norm in (none, batch, layer), as dicts of :func:`get_config` args.

  ``arg``: ``data`` (default books), ``size``, ``context``, ``seeds=N`` (default 1),
  ``steps=N``, ``ln_gains`` (also LN with gain 0.1, the paper's other setting).
  """
  a = parse_arg(arg, data='books', size='', context='top4', seeds=1, steps=0, ln_gains=False)
  extra = {k: v for k, v in (('size', a.size), ('steps', a.steps)) if v}
  if a.data == 'books':
    extra['context'] = a.context
  runs = [
    {'data': a.data, 'norm': norm, 'seed': seed, **extra}
    for norm in NORMS
    for seed in range(a.seeds)
  ]
  if a.ln_gains:
    runs += [
      {'data': a.data, 'norm': 'layer', 'ln_gain': 0.1, 'seed': seed, **extra}
      for seed in range(a.seeds)
    ]
  return runs
