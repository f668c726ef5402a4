r"""Convolutional networks on MNIST, paper §6.7: none vs batch vs layer (vs RMS, group) norm.

Run book (from the repository root, with the venv active):

  # One run: layer norm over each example's (H, W, C), real MNIST read from
  # the four official files in $LNORM_DATA_DIR/mnist or ../shared/data/mnist.
  python -m lnorm.main --config=configs/convnet.py:norm=layer --workdir=runs/convnet/layer-s0

  # The results' grid (5 norms x 3 seeds, 240 steps each), one run after another:
  python scripts/sweep.py --config=configs/convnet.py:seeds=3 --root=runs/convnet
  python scripts/convnet_report.py runs/convnet --out results/convnet

  # The embedded 5,000-digit MNIST subset (no data dir), or a tiny run for tests:
  python -m lnorm.main --config=configs/convnet.py:norm=batch,data=embedded --workdir=...
  python -m lnorm.main --config=configs/convnet.py:norm=group,smoke --workdir=...

Args (comma-separated after the colon): ``norm`` (none|batch|layer|rms|group,
default layer), ``seed``, ``lr`` (Adam, default 1e-3), ``steps`` (default 240;
0: ``epochs`` epochs), ``epochs`` (default 1),
``batch_size`` (default 128), ``data`` (idx|tfds|embedded; default idx, the four
official files), ``data_dir``, ``num_groups`` (group norm, default 4), ``smoke``
(4- and 8-channel convolutions on 512 embedded images, 2 epochs: seconds).

The network is Flax's MNIST CNN at a quarter of its width (8 and 16 channels of 3x3
convolutions with 2x2 average pooling, a 64-unit hidden layer), ``norm`` on
the convolutions' pre-activations (see ``experiments/convnet.py``). The paper
gives no architecture or learning rate for §6.7; Adam at 1e-3, the rate of the
pMNIST runs here (the Flax example trains with SGD and momentum instead).

Measured here (2 CPU cores shared with other jobs, load average 14-17, niced):
a 240-step run takes 60-145 s of wall time, about 30 s of CPU, training at
900-1,500 examples/s (group and layer norm the slowest); the 15-run grid took
25 minutes. After 240 updates the normalized networks reach 3.2-3.8% test
error, no normalization 7.1% (results/convnet.md).
"""

from __future__ import annotations

import ml_collections

from lnorm.lab.config_args import check_int, optimizer_fields, parse_arg

#: The paper's comparison (§6.7), and the norms added to it here.
PAPER_NORMS = ('none', 'batch', 'layer')
EXTRA_NORMS = ('rms', 'group')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one convnet run; ``arg`` as in the module docstring."""
  a = parse_arg(
    arg,
    norm='layer',
    seed=0,
    lr=1e-3,
    steps=240,
    epochs=1,
    batch_size=128,
    data='idx',
    data_dir=None,
    num_groups=4,
    smoke=False,
  )
  check_int('batch_size', a.batch_size, minimum=1)
  c = ml_collections.ConfigDict()
  c.experiment = 'convnet'
  c.norm = a.norm
  c.seed = a.seed

  # Data: the pMNIST split (55,000 / 5,000 by split_seed 0), pixels in order.
  c.data_source = a.data
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.data_dir = a.data_dir
  c.num_train = 0  # 0: every training image that num_valid leaves.
  c.num_valid = 500 if a.data == 'embedded' else 5000  # The embedded subset has 4,000.
  c.num_test = 0  # 0: the whole test set.
  c.split_seed = 0

  # Model: Flax's MNIST CNN at a quarter of its width (LeNet-5's scale: 6 and 16 channels).
  c.features = (8, 16)
  c.kernel_size = 3
  c.dense_size = 64
  c.num_groups = a.num_groups  # Group norm: 8 and 16 channels in groups of 2 and 4.
  c.norm_epsilon = 1e-5
  # The running averages must settle within a one-epoch run (429 steps): 0.9, as PyTorch's 0.1.
  c.bn_momentum = 0.9

  # Optimization: Adam at a fixed budget of steps (0: num_epochs epochs).
  c.batch_size = a.batch_size
  c.num_steps = a.steps
  c.num_epochs = a.epochs
  c.update(optimizer_fields(a.lr))

  # Loop: the test set every 40 steps (the validation split is held out, unused).
  c.steps_per_call = 8
  c.log_every_steps = 8
  c.eval_valid = False
  c.evals_per_epoch = 0
  c.eval_every_steps = 40
  c.eval_batch_size = 1000
  c.checkpoint_every_steps = 0  # 0: at each epoch's end (and the last step).
  c.keep_checkpoints = 2

  if a.smoke:
    c.data_source = 'embedded' if a.data == 'idx' else a.data
    c.num_train, c.num_valid, c.num_test = 512, 128, 128
    c.features = (4, 8)
    c.dense_size = 16
    c.num_groups = 2 if a.num_groups == 4 else a.num_groups
    c.batch_size = 64 if a.batch_size == 128 else a.batch_size
    c.num_steps = 0 if a.steps == 240 else a.steps
    c.num_epochs = 2 if a.epochs == 1 else a.epochs
    c.steps_per_call = 2
    c.log_every_steps = 2
    c.eval_valid = True
    c.eval_every_steps = 0
    c.evals_per_epoch = 2
    c.eval_batch_size = 128
  return c


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
  """The results' grid: norm x seed, as dicts of :func:`get_config` args.

  ``arg``: ``seeds=N`` (default 3), ``norms`` ('+'-separated, default
  ``none+batch+layer+rms+group``), ``data``, ``epochs`` (0: the config's),
  ``lr`` (0: the config's), ``smoke``.
  """
  a = parse_arg(
    arg,
    seeds=3,
    norms='+'.join(PAPER_NORMS + EXTRA_NORMS),
    data='idx',
    epochs=0,
    lr=0.0,
    smoke=False,
  )
  norms = tuple(n for n in a.norms.split('+') if n)
  extra: dict[str, object] = {'data': a.data} if a.data != 'idx' else {}
  if a.epochs:
    extra['epochs'] = a.epochs
  if a.lr:
    extra['lr'] = a.lr
  if a.smoke:
    extra['smoke'] = True
  # Seed-major: a grid cut short still has every norm at the seeds it reached.
  return [{'norm': norm, 'seed': seed, **extra} for seed in range(a.seeds) for norm in norms]
