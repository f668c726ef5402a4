r"""Handwriting synthesis, paper §6.5 and Figure 5: LSTM vs LN-LSTM (Graves 2013, §5).

Run book (from the repository root, with the venv active):

  # The paper's setting, for a user who has IAM-OnDB (lineStrokes/ and ascii/, and the
  # task's trainset.txt ... testset_f.txt, in DIR; not run here: the data is not shipped):
  python -m lnorm.main --config=configs/handwriting.py:data=iam,norm=layer \
      --config.data_dir=DIR --workdir=runs/handwriting/iam-layer

  # The Hershey stand-in at CPU scale (the runs of results/handwriting.md; fonts and
  # books from $LNORM_DATA_DIR or ../shared/data), one per norm:
  python -m lnorm.main --config=configs/handwriting.py:data=hershey,norm=none \
      --workdir=runs/handwriting/hershey-none
  python -m lnorm.main --config=configs/handwriting.py:data=hershey,norm=layer \
      --workdir=runs/handwriting/hershey-layer

  # Figure 5, the samples and the table:
  python scripts/handwriting_report.py runs/handwriting/hershey-none \
      runs/handwriting/hershey-layer --out results/handwriting

Re-running a command resumes its workdir; ``steps=N`` may be raised on resume.

Args (comma-separated after the colon): ``data`` (iam|hershey, default iam), ``norm``
(none|layer, default layer), ``scale`` (paper|cpu; default paper for iam, cpu for
hershey), ``steps``, ``lr``, ``seed``, ``batch_size`` (0: the scale's), ``clip``
(graves|norm|both|none: Graves' derivative clipping, global-norm clipping at 10, both,
or neither; default graves), ``data_dir``, ``smoke`` (a tiny run of either data set, well
under a minute).

Scales:

* ``paper``: 3 LSTM layers of 400 units, a window of 10 Gaussians, 20 mixture
  components, batch 8, lines cut to 500 points (the paper and Graves §5; about 3.7M
  weights with IAM-OnDB's alphabet), Adam 1e-4 (the paper gives no learning rate; 1e-4
  is Graves' RMSProp rate), Graves' derivative clipping (outputs to [-100, 100], LSTM
  to [-10, 10]).
* ``cpu`` (the stand-in runs of ``results/handwriting.md``): 2 LSTM layers of 128 units
  (about 0.31M weights), a window of 10 Gaussians, 20 mixture components, batch 8, lines
  of at most 200 offsets (stand-in texts of 6-16 characters drawn at ~14 points a
  character), Adam 1e-3, Graves' clipping, 1,500 updates; validation NLL on 160 lines
  every 60 updates.

Measured on 2 CPU cores shared with other jobs (load average 12-17), both norms at
once: 21-26 lines/s (3,100-3,800 points/s) per run; 1,500 updates took 12-13 minutes
per run (the runs were started with ``steps=600`` and resumed to 1,500). At the paper's
scale one update (8 x 500 points) took 12-15 s here.

IAM-OnDB splits (``data=iam``): following Graves (2013, §4), who trained on the training
set, the test set and the larger validation set and kept the smaller validation set for
early stopping: ``iam_train_lists='trainset,testset_t,testset_f'``,
``iam_valid_lists='testset_v'`` (check the sizes of your lists; any lists may be given).
Without the list files, a seeded 90/5/5 split by form.
"""

from __future__ import annotations

import ml_collections

from lnorm.lab.config_args import check_choice, optimizer_fields, parse_arg

NORMS = ('none', 'layer')
DATA = ('iam', 'hershey')
SCALES = ('paper', 'cpu')
CLIPS = ('graves', 'norm', 'both', 'none')
SAMPLE_TEXTS = 'the quick brown fox|layer normalization|a lower loss, faster'
CPU_SAMPLE_TEXTS = 'the quick fox|layer norm|less is more'  # At most 16 characters.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one handwriting run; ``arg`` as in the module docstring."""
  a = parse_arg(
    arg,
    data='iam',
    norm='layer',
    scale='',
    steps=0,
    lr=0.0,
    seed=0,
    batch_size=0,
    clip='graves',
    data_dir=None,
    smoke=False,
  )
  check_choice('data', a.data, DATA)
  scale = a.scale or ('paper' if a.data == 'iam' else 'cpu')
  check_choice('scale', scale, SCALES)
  check_choice('clip', a.clip, CLIPS)
  c = ml_collections.ConfigDict()
  c.experiment = 'handwriting'
  c.norm = a.norm
  c.seed = a.seed
  c.scale = scale

  # Data.
  c.data = a.data
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.data_dir = a.data_dir  # None: found at run time (iam_ondb or hershey).
  c.books_dir = ml_collections.config_dict.placeholder(str)  # The stand-in's text.
  c.data_seed = 0
  c.max_points = 500  # Offsets per line (the paper: sequences of 500 points).
  c.long_lines = 'cut'  # cut|drop lines with more offsets.
  c.iam_train_lists = 'trainset,testset_t,testset_f'
  c.iam_valid_lists = 'testset_v'
  c.iam_test_lists = ''
  c.iam_on_mismatch = 'error'  # error|skip forms whose stroke files and CSR lines differ.
  c.hershey_fonts = 'cursive,scripts,scriptc'
  c.hershey_writers = 200
  c.hershey_lines_per_writer = 30
  c.hershey_valid_writers = 10
  c.hershey_test_writers = 10
  c.hershey_max_chars = 40
  c.hershey_min_chars = 10
  c.hershey_pen_step = 2.7  # Mean arc length between points: ~21 points a character.

  # Model (Graves §5: 3 x 400 LSTM, K = 10 window Gaussians, M = 20 components).
  c.hidden_sizes = (400, 400, 400)
  c.num_window_components = 10
  c.num_mixture_components = 20
  c.norm_epsilon = 1e-5
  c.kappa_bias_init = ml_collections.config_dict.placeholder(float)  # None: -log(pts/char).
  c.scan_unroll = 1

  # Optimization: Adam, batch 8; Graves' derivative clipping.
  c.batch_size = a.batch_size or 8
  c.num_epochs = 1  # Unused: num_steps sets the length.
  c.num_steps = a.steps or 50000
  c.update(optimizer_fields(a.lr or 1e-4))
  c.derivative_clipping = a.clip in ('graves', 'both')
  c.output_clip = 100.0
  c.lstm_clip = 10.0
  c.grad_clip_norm = 10.0 if a.clip in ('norm', 'both') else 0.0

  # Loop and evaluation.
  c.steps_per_call = 10
  c.log_every_steps = 50
  c.eval_every_steps = 1000
  c.eval_batch_size = 64
  c.num_valid_eval = 0  # 0: the whole validation set.
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.sample_texts = SAMPLE_TEXTS
  c.sample_bias = 1.0
  c.sample_max_steps = 1500

  if scale == 'cpu':
    c.hidden_sizes = (128, 128)
    c.max_points = 200
    c.hershey_max_chars = 16
    c.hershey_min_chars = 6
    c.hershey_pen_step = 4.0  # ~14 points a character: 2-3 words in 200 points.
    c.learning_rate = a.lr or 1e-3
    c.num_steps = a.steps or 1500
    c.log_every_steps = 20
    c.eval_every_steps = 60
    c.num_valid_eval = 160
    c.checkpoint_every_steps = 60
    c.sample_texts = CPU_SAMPLE_TEXTS
    c.sample_max_steps = 400
  if a.smoke:
    c.hidden_sizes = (16, 16)
    c.num_window_components = 2
    c.num_mixture_components = 3
    c.max_points = 100
    c.batch_size = a.batch_size or 4
    c.num_steps = a.steps or 6
    c.steps_per_call = 2
    c.log_every_steps = 2
    c.eval_every_steps = 2
    c.eval_batch_size = 8
    c.num_valid_eval = 8
    c.checkpoint_every_steps = 2
    c.hershey_writers = 6
    c.hershey_lines_per_writer = 4
    c.hershey_valid_writers = 1
    c.hershey_test_writers = 1
    c.hershey_max_chars = 5
    c.hershey_min_chars = 2
    c.sample_texts = 'ab|cd'
    c.sample_max_steps = 20
  return c


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
  """The paper's comparison, norm in (none, layer), as dicts of :func:`get_config` args.

  ``arg``: ``data=iam|hershey`` (default hershey), ``steps=N``, ``seeds=N`` (default 1).
  """
  a = parse_arg(arg, data='hershey', steps=0, seeds=1)
  extra = {'steps': a.steps} if a.steps else {}
  return [
    {'data': a.data, 'norm': norm, 'seed': seed, **extra}
    for norm in NORMS
    for seed in range(a.seeds)
  ]
