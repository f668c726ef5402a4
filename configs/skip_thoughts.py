r"""Skip-thought vectors, paper §6.3, Table 3 and Figure 4: GRU vs LN-GRU encoders.

Run book (from the repository root, with the venv active; data from
``$LNORM_DATA_DIR/{books,senteval}`` or ``../shared/data/{books,senteval}``):

  # The CPU-scale runs (8 epochs of the book corpus each), one per norm; on two cores,
  # one per core (they resume: rerun the same command after an interruption):
  taskset -c 0 python -m lnorm.main --config=configs/skip_thoughts.py:size=cpu,norm=layer \
      --workdir=runs/skip_thoughts/cpu-layer &
  taskset -c 1 python -m lnorm.main --config=configs/skip_thoughts.py:size=cpu,norm=none \
      --workdir=runs/skip_thoughts/cpu-none &

  # The full protocol (10-fold CV on all of MR/CR/SUBJ/MPQA, TREC, SICK) on checkpoints
  # (steps: multiples of the 867 steps of an epoch; default: the latest), standardized
  # features, raw features (as SentEval fits them), and the word-embedding ablation:
  python -m scripts.skip_thoughts_eval --workdir=runs/skip_thoughts/cpu-layer --step=1734,3468
  python -m scripts.skip_thoughts_eval --workdir=runs/skip_thoughts/cpu-layer --raw
  python -m scripts.skip_thoughts_eval --workdir=runs/skip_thoughts/cpu-layer --encoder=embeddings

  # The floors: a bag of fixed random word vectors, and restricted to the runs' vocabulary:
  python scripts/senteval_baseline.py --data_dir ../shared/data/senteval --dim 300 \
      --json results/senteval_floor_300.json
  python scripts/senteval_baseline.py --data_dir ../shared/data/senteval --dim 256 \
      --vocab runs/skip_thoughts/cpu-layer/vocab.json \
      --json results/senteval_floor_256_books_vocab.json

  # Table 3, Figure 4 and results/skip_thoughts_full.json:
  python scripts/skip_thoughts_report.py runs/skip_thoughts/cpu-{none,layer} \
      --floor 'bag of random words, 300-d=results/senteval_floor_300.json' \
      --out results/skip_thoughts

  # The paper's sizes (620-d embeddings, 2400-d GRUs, 20k words; not run here):
  python -m lnorm.main --config=configs/skip_thoughts.py:norm=layer \
      --workdir=runs/skip_thoughts/paper-layer

Re-running a command resumes its workdir; ``epochs=N`` or ``steps=N`` (or
``--config.num_steps=N``) may be raised on resume to train longer (the learning rate is
constant).

Args (comma-separated after the colon): ``norm`` (none|layer, default layer), ``size``
(paper|cpu|smoke, default paper), ``conditioning`` (every_step|initial_state),
``batch_size`` (0: the size's default), ``lr``, ``seed``, ``steps`` (0: ``epochs``
epochs), ``epochs`` (0: the size's default: paper 5, cpu 8, smoke 1), ``data_dir``,
``senteval_dir``, ``tasks`` (SentEval tasks evaluated during training, e.g. ``MR+SICK``;
``+`` separates them inside the arg; default all six, ``size=cpu``: the five of the
paper's Figure 4 and Table 3, without TREC), ``senteval_every`` (steps between SentEval
points; 0: the size's default), ``smoke`` (same as ``size=smoke``).

Sizes:

* ``paper``: 620-d embeddings, 2400-d GRUs, 20,000 words, batch 128, Adam 1e-3 (our
  choice; the paper does not give one here), clipping at 5, sentences of 30 ids.
* ``cpu``: 128-d embeddings, 256-d GRUs, 10,000 words, batch 64, 8 epochs. Chosen for
  the corpus and the machine: the 16 books hold 1.45M tokens in 56,532 sentences and
  34,408 word types; the 10,000 most frequent words cover 97.0% of the tokens and each
  occurs at least 5 times (20,000 words would add words seen twice; 5,000 would cover
  93.8% of the corpus but only 74-85% of the SentEval tokens, against 81-90% with
  10,000). The model has 5.1M parameters (half of them in the 10,003-way output layer);
  a 2400-d GRU encoder alone would have 22M, some 15 per training token. 8 epochs are
  6,936 steps (867 an epoch): per run on one core, 28 triples/s (4.5 hours) on a machine
  measuring 34 GFLOP/s of f32 matmul a core, 49 triples/s before the output layer ran on
  the real tokens only (about 2.5 hours then) on one measuring 91.
  Periodic evaluation once an epoch and at step 0: valid/nll and SentEval on MR, CR,
  SUBJ, MPQA, SICK, with 5-fold outer / 2-fold inner CV on stratified subsets of 2,000
  sentences of MR/CR/SUBJ/MPQA (SICK whole), each with a checkpoint kept for the full
  protocol (``scripts/skip_thoughts_eval.py``).
* ``smoke``: 16-d embeddings, 32-d GRUs, 200 words, batch 8: for tests.
"""

from __future__ import annotations

import ml_collections

from lnorm.lab.config_args import check_choice, optimizer_fields, parse_arg

NORMS = ('none', 'layer')
SIZES = ('paper', 'cpu', 'smoke')
ALL_TASKS = 'MR,CR,SUBJ,MPQA,TREC,SICK'
FIGURE4_TASKS = 'MR,CR,SUBJ,MPQA,SICK'  # The tasks of the paper's Figure 4 and Table 3.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one skip-thoughts run; ``arg`` as in the module docstring."""
  a = parse_arg(
    arg,
    norm='layer',
    size='paper',
    conditioning='every_step',
    batch_size=0,
    lr=1e-3,
    seed=0,
    steps=0,
    epochs=0,
    data_dir=None,
    senteval_dir=None,
    tasks='',
    senteval_every=0,
    smoke=False,
  )
  size = 'smoke' if a.smoke else a.size
  check_choice('size', size, SIZES)
  c = ml_collections.ConfigDict()
  c.experiment = 'skip_thoughts'
  c.norm = a.norm
  c.seed = a.seed
  c.size = size

  # Data.
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.data_dir = a.data_dir  # None: found at run time (lnorm.lab.workdir.find_data_dir).
  c.data_layout = 'auto'
  c.max_length = 30  # Ids per sentence: 29 words + <eos>.
  c.num_valid = 1000  # Held-out triples for valid/nll.
  c.split_seed = 0

  # Model.
  c.vocab_size = 20000
  c.embed_dim = 620
  c.hidden_dim = 2400
  c.decoder_conditioning = a.conditioning
  c.norm_epsilon = 1e-5
  # The output layer runs on the real target tokens only, packed into a block of this share
  # of a batch's 2 * batch_size * max_length positions (the book corpus: 64% real on average,
  # at most 75.5% in 20,000 random batches of 64); a fuller batch takes the unpacked path.
  # Same numbers either way (up to float rounding), 1.4x faster steps at size=cpu.
  c.decoder_token_capacity = 0.75

  # Optimization (Kiros et al.: Adam, gradient norm clipped at 5).
  c.batch_size = a.batch_size or 128
  c.num_epochs = a.epochs or 5
  c.num_steps = a.steps  # 0: num_epochs epochs.
  c.update(optimizer_fields(a.lr, grad_clip_norm=5.0))

  # Loop and evaluation.
  c.steps_per_call = 4
  c.log_every_steps = 20
  c.evals_per_epoch = 1
  c.eval_batch_size = 250
  c.senteval_dir = ml_collections.config_dict.placeholder(str)
  c.senteval_dir = a.senteval_dir  # None: found at run time.
  c.senteval_tasks = a.tasks.replace('+', ',') or ALL_TASKS
  c.senteval_every_steps = a.senteval_every or 5000
  c.senteval_per_epoch = 0  # SentEval points per epoch, besides senteval_every_steps.
  c.senteval_folds = 10
  c.senteval_inner_folds = 5
  c.senteval_max_examples = 0  # 0: all the sentences of MR/CR/SUBJ/MPQA.
  c.keep_checkpoints = 5

  if size == 'cpu':
    c.vocab_size = 10000
    c.embed_dim = 128
    c.hidden_dim = 256
    c.batch_size = a.batch_size or 64
    c.num_epochs = a.epochs or 8
    c.senteval_tasks = a.tasks.replace('+', ',') or FIGURE4_TASKS
    # Once an epoch (with its checkpoint), or every senteval_every steps when given.
    c.senteval_every_steps = a.senteval_every
    c.senteval_per_epoch = 0 if a.senteval_every else 1
    c.evals_per_epoch = c.senteval_per_epoch
    c.senteval_folds = 5
    c.senteval_inner_folds = 2
    c.senteval_max_examples = 2000
    c.keep_checkpoints = 10
  elif size == 'smoke':
    c.vocab_size = 200
    c.embed_dim = 16
    c.hidden_dim = 32
    c.max_length = 12
    c.batch_size = a.batch_size or 8
    c.num_valid = 16
    c.num_epochs = a.epochs or 1
    c.num_steps = a.steps or 8  # Well under a minute whatever corpus is found.
    c.steps_per_call = 2
    c.log_every_steps = 2
    c.eval_batch_size = 16
    c.senteval_every_steps = a.senteval_every or 4
    c.senteval_folds = 2
    c.senteval_inner_folds = 2
    c.senteval_max_examples = 100
  c.eval_every_steps = c.senteval_every_steps  # valid/nll at every SentEval point.
  # Each SentEval point has its checkpoint (0: at each epoch's end).
  c.checkpoint_every_steps = c.senteval_every_steps
  return c


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
  """The paper's comparison: norm in (none, layer), as dicts of :func:`get_config` args.

  ``arg``: ``size=cpu`` (default), ``steps=N``, ``seeds=N`` (default 1).
  """
  a = parse_arg(arg, size='cpu', steps=0, seeds=1)
  extra = {'steps': a.steps} if a.steps else {}
  return [
    {'size': a.size, 'norm': norm, 'seed': seed, **extra}
    for norm in NORMS
    for seed in range(a.seeds)
  ]
