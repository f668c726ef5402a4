r"""Skip-thought vectors, paper §6.3, Table 3 and Figure 4: GRU vs LN-GRU encoders.

Run book (from the repository root, with the venv active; data from
``$LNORM_DATA_DIR/{books,senteval}`` or ``../shared/data/{books,senteval}``):

  # The CPU-scale run (the one measured here), one per norm:
  python -m lnorm.main --config=configs/skip_thoughts.py:size=cpu,norm=layer \
      --workdir=runs/skip_thoughts/cpu-layer
  python -m lnorm.main --config=configs/skip_thoughts.py:size=cpu,norm=none \
      --workdir=runs/skip_thoughts/cpu-none

  # The paper's sizes (620-d embeddings, 2400-d GRUs, 20k words; not run here):
  python -m lnorm.main --config=configs/skip_thoughts.py:norm=layer \
      --workdir=runs/skip_thoughts/paper-layer

  # The full SentEval protocol on a checkpoint (default: the latest):
  python -m scripts.skip_thoughts_eval --workdir=runs/skip_thoughts/cpu-layer

  # Figure 4 and the table from the workdirs:
  python scripts/compare.py runs/skip_thoughts/cpu-* --x step --panel '' \
      --metrics senteval/MR,senteval/CR,senteval/SUBJ,senteval/MPQA,senteval/TREC,senteval/SICK_r \
      --maximize senteval/MR,senteval/CR,senteval/SUBJ,senteval/MPQA,senteval/TREC,senteval/SICK_r \
      --out results/skip_thoughts

Re-running a command resumes its workdir; ``steps=N`` (or ``--config.num_steps=N``) may
be raised on resume to train longer (the learning rate is constant).

Args (comma-separated after the colon): ``norm`` (none|layer, default layer), ``size``
(paper|cpu|smoke, default paper), ``conditioning`` (every_step|initial_state),
``batch_size`` (0: the size's default), ``lr``, ``seed``, ``steps`` (0: ``epochs``
epochs), ``epochs``, ``data_dir``, ``senteval_dir``, ``tasks`` (SentEval tasks evaluated
during training, e.g. ``MR+SICK``; ``+`` separates them inside the arg; default all six,
``size=cpu``: the five of the paper's Figure 4 and Table 3, without TREC),
``senteval_every`` (steps between SentEval points; 0: the size's default), ``smoke``
(same as ``size=smoke``).

Sizes:

* ``paper``: 620-d embeddings, 2400-d GRUs, 20,000 words, batch 128, Adam 1e-3 (our
  choice; the paper does not give one here), clipping at 5, sentences of 30 ids.
* ``cpu``: 128-d embeddings, 256-d GRUs, 10,000 words, batch 64: trains on two shared
  CPU cores. Periodic SentEval (every 80 steps and at step 0) on MR, CR, SUBJ, MPQA,
  SICK, with 5-fold outer / 2-fold inner CV on stratified subsets of 2,000 sentences of
  MR/CR/SUBJ/MPQA (SICK whole); the full protocol on any checkpoint with
  ``scripts/skip_thoughts_eval.py``.
* ``smoke``: 16-d embeddings, 32-d GRUs, 200 words, batch 8: for tests.

Measured on 2 CPU cores shared with other jobs (load average 3-15), both norms at once:
16-17 training sentences/s per run (64 per step, ~4 s a step); one periodic SentEval
point took 1-15 minutes depending on the load (its logistic regressions are most of it).
The runs of ``results/skip_thoughts.md`` (320 steps, ~0.37 epoch, ~1 hour):

  for n in none layer; do
    python -m lnorm.main --config=configs/skip_thoughts.py:size=cpu,norm=$n,steps=320 \
        --workdir=runs/skip_thoughts/cpu-$n &
  done
  python scripts/skip_thoughts_report.py runs/skip_thoughts/cpu-none \
      runs/skip_thoughts/cpu-layer --out results/skip_thoughts

(they were started with ``senteval_every=40`` for steps 0-160 and 80 after; raising
``steps`` on resume trains further).
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
