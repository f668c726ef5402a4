r"""Permutation-invariant MNIST, paper §6.6 and Figure 6: none vs batch vs layer norm.

Run book (from the repository root, with the venv active):

  # One run: layer norm, batch size 4, real MNIST from tfds (prepared once,
  # see lnorm/lab/data/mnist.py).
  python -m lnorm.main --config=configs/pmnist.py:norm=layer,batch_size=4 \
      --workdir=runs/pmnist/layer-bs4-s0

  # Real MNIST read straight from the four official files (no TensorFlow);
  # data_dir may be left out when $LNORM_DATA_DIR/mnist holds them.
  python -m lnorm.main \
      --config=configs/pmnist.py:norm=batch,batch_size=4,data=idx,data_dir=../shared/data/mnist \
      --workdir=runs/pmnist/batch-bs4-s0

  # The embedded 5,000-digit MNIST subset (no network, no data dir).
  python -m lnorm.main --config=configs/pmnist.py:norm=batch,data=embedded \
      --workdir=runs/pmnist-embedded/batch-bs128-s0

  # Any field can be overridden after the arg:
  python -m lnorm.main --config=configs/pmnist.py:norm=layer --config.num_epochs=5 \
      --config.learning_rate=3e-4 --workdir=...

Args (comma-separated after the colon): ``norm`` (none|batch|layer|weight|rms,
default layer), ``batch_size`` (default 128; the paper also uses 4), ``seed``,
``lr``, ``epochs``, ``data`` (tfds|idx|embedded; idx reads the four official files
in ``data_dir``), ``data_dir``, ``api`` (linen|nnx: the model in
Flax linen or NNX, the same numbers), ``smoke`` (a
tiny run for tests: 32-32 hidden units, 512 embedded images, 2 epochs).
Set the batch size through the arg rather than ``--config.batch_size``: the
defaults of ``unbiased_variance``, ``steps_per_call`` and ``log_every_steps``
follow it.

Expected runtime on 2 shared CPU cores (measured with real MNIST, layer norm,
load average ~7 from other jobs): training runs at ~4,300 examples/s at batch
size 128 and ~570 examples/s at batch size 4, so one epoch of 55,000 images
(with 4 evaluations of 15,000 images) takes ~20 s and ~100 s; a 20-epoch run
~7 and ~35 minutes. After one epoch, layer norm at batch size 128 reaches
~3% test error. The paper reports (Figure 6) that layer norm converges faster
than batch norm at batch size 128 and is robust at batch size 4, where batch
norm degrades; it gives no learning rate (1e-3 here).
"""

from __future__ import annotations

import ml_collections

from lnorm.lab.config_args import check_int, optimizer_fields, parse_arg

#: The norms of Figure 6, and the extra ones this project compares.
PAPER_NORMS = ('none', 'batch', 'layer')
EXTRA_NORMS = ('weight', 'rms')
PAPER_BATCH_SIZES = (128, 4)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one pMNIST run; ``arg`` as in the module docstring."""
  a = parse_arg(
    arg,
    norm='layer',
    batch_size=128,
    seed=0,
    lr=1e-3,
    epochs=20,
    data='tfds',
    data_dir=None,
    api='linen',
    smoke=False,
  )
  check_int('batch_size', a.batch_size, minimum=1)  # The defaults below divide by it.
  c = ml_collections.ConfigDict()
  c.experiment = 'pmnist'
  c.norm = a.norm
  c.api = a.api  # linen or nnx: the same model and numbers.
  c.seed = a.seed

  # Data.
  c.data_source = a.data
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.data_dir = a.data_dir
  c.num_train = 0  # 0: every training image that num_valid leaves (55,000 of 60,000).
  c.num_valid = 500 if a.data == 'embedded' else 5000  # The embedded subset has 4,000.
  c.num_test = 0  # 0: the whole test set.
  c.split_seed = 0  # The train/valid split is the same for every run.
  c.permute_pixels = True
  c.permutation_seed = 0  # One fixed pixel order for every run: it names the task.

  # Model.
  c.hidden_sizes = (1000, 1000)
  c.norm_epsilon = 1e-5
  c.unbiased_variance = a.batch_size < 8  # Batch norm's Bessel correction (paper: batch 4).

  # Optimization (the paper: Adam; it gives no learning rate for this task).
  c.batch_size = a.batch_size
  c.num_epochs = a.epochs
  c.update(optimizer_fields(a.lr))

  # Loop: tiny batches run many steps per jitted call to amortize dispatch.
  # Rows fall on multiples of steps_per_call so that calls stay whole (a call
  # cut short by a row runs its steps one by one).
  c.steps_per_call = 64 if a.batch_size <= 16 else 8
  c.log_every_steps = c.steps_per_call * max(1, round(6400 / a.batch_size / c.steps_per_call))
  c.evals_per_epoch = 4
  c.eval_every_steps = 0
  c.eval_batch_size = 1000
  c.checkpoint_every_steps = 0  # 0: at each epoch's end (and the last step).
  c.keep_checkpoints = 3

  if a.smoke:
    c.data_source = 'embedded' if a.data == 'tfds' else a.data
    c.num_train, c.num_valid, c.num_test = 512, 128, 128
    c.hidden_sizes = (32, 32)
    c.num_epochs = 2 if a.epochs == 20 else a.epochs
    c.steps_per_call = 2
    c.log_every_steps = 2
    c.evals_per_epoch = 2
    c.eval_batch_size = 128
  return c


def get_sweep(arg: str | None = None) -> list[dict[str, object]]:
  """The paper's grid: norm x batch size x seed, as dicts of :func:`get_config` args.

  ``arg``: ``seeds=N`` (default 3), ``all_norms`` (add weight and rms norm),
  ``data=embedded``, ``epochs=N``, ``smoke``. Each dict turns into a config
  string with ``','.join(f'{k}={v}' for k, v in d.items())``.
  """
  a = parse_arg(arg, seeds=3, all_norms=False, data='tfds', epochs=0, smoke=False)
  norms = PAPER_NORMS + (EXTRA_NORMS if a.all_norms else ())
  extra = {'data': a.data} if a.data != 'tfds' else {}
  if a.epochs:
    extra['epochs'] = a.epochs
  if a.smoke:
    extra['smoke'] = True
  return [
    {'norm': norm, 'batch_size': bs, 'seed': seed, **extra}
    for bs in PAPER_BATCH_SIZES
    for norm in norms
    for seed in range(a.seeds)
  ]
