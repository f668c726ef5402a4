"""lnorm's benchmark: ratios against Flax and against the memory-traffic floor, in one process.

Run book::

    python -m scripts.bench            # full run, ~12 min on 2 idle cores: results/bench.{md,json}
    python -m scripts.bench --quick    # ~1-2 min, smaller shapes: results/bench-quick.{md,json}
    python -m scripts.bench --sections=layer_norm --reps=21

Every number that matters is a ratio of medians of interleaved runs measured
in the same process after compilation (see :mod:`lnorm.lab.benchmarking`); the
report's header gives the machine, the load average and the library versions.

Sections (``--sections``, comma-separated; add one by writing a function
``section_<name>(cfg) -> Section`` and listing it in ``SECTIONS``):

* ``layer_norm``: ``lnorm.layer_norm`` forward and forward+backward (output
  and gradients for x, scale and bias) against ``flax.linen.LayerNorm``
  (epsilon matched), PyTorch's ``F.layer_norm`` (eager), autodiff of our own
  formula, and element-wise ops that move the same bytes, at 4096x512, a
  large 2-D shape and a transformer-sized 64x128x768; achieved GB/s, compile
  time, XLA's memory analysis and the bytes reverse mode keeps for the
  backward pass.
* ``rnn``: LN-LSTM / LN-GRU (``lnorm.recurrent``) and their ``norm='none'``
  twins against Flax's ``OptimizedLSTMCell`` / ``GRUCell`` in ``nn.RNN`` and
  PyTorch (``nn.LSTM``/``nn.GRU``, and the LN cells written by hand), forward
  and forward+backward; plus LN-LSTM with the input projection and its layer
  norm hoisted out of the time loop (as first written, and with the slice
  carried through the loop).
* ``skip_thoughts``: examples/s of the experiment's real jitted training step
  at ``size=cpu`` (norm none and layer), the model's matmul FLOP/s as a
  fraction of the f32 matmul rate measured in the same process, and the same
  model, loss and optimizer in PyTorch.
* ``attentive_reader``, ``draw``, ``handwriting``, ``order_embeddings``: the same for
  the other recurrent experiments at the sizes their results used, each from the
  ``SPEC`` of ``scripts/bench_steps/<name>.py`` (ours: the experiment's real step on
  synthetic batches shaped like its data; the peer: the same model, loss and
  optimizer in eager PyTorch, tested to give the same loss at the same parameters).
* ``pmnist``: training throughput (examples/s) of the pMNIST MLP at batch 128
  and 4 (norm none, layer, batch): the experiment's real chunked, donated
  training step against the same model and Adam in PyTorch (eager with as many
  threads as cores and with one thread; ``torch.compile`` for layer norm in a
  full run), with the machine's f32 matmul rate and memory bandwidth measured
  in the same process: the model's FLOP/s as a fraction of the matmul rate at
  batch 128, and the Adam-traffic floor (7*4*P bytes per step) over the step
  time at batch 4.
* ``allocator``: the same two layer-norm timings in two child processes, with
  and without ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``.

The allocator: glibc's malloc hands XLA:CPU fresh pages for every large
buffer, and the page faults dominate large element-wise ops. Huge pages
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``) avoid most of them. The setting
must be in the environment when the process starts, so this script re-executes
itself with it unless ``--allocator=default`` (the Makefile exports it too).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnorm.lab import cli

HUGETLB = 'glibc.malloc.hugetlb=1'
REPO = Path(__file__).resolve().parents[1]


def _parse_args(argv=None):
  p = cli.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='smaller shapes and fewer repetitions')
  p.add_argument(
    '--sections',
    default='layer_norm,rnn,skip_thoughts,attentive_reader,draw,handwriting,order_embeddings,'
    'pmnist,allocator',
  )
  p.add_argument('--reps', type=int, default=None, help='repetitions per timing (median)')
  p.add_argument('--out', default=None, help='report path without suffix (default results/bench)')
  p.add_argument(
    '--allocator',
    choices=('hugetlb', 'default'),
    default='hugetlb',
    help='glibc malloc setting the benchmark runs under (the script re-executes itself)',
  )
  return p.parse_args(argv)


def _reexec_for_allocator(args) -> None:
  """Re-executes this script with GLIBC_TUNABLES set (or unset) as ``--allocator`` asks."""
  want = HUGETLB if args.allocator == 'hugetlb' else ''
  if os.environ.get('GLIBC_TUNABLES', '') == want:
    return
  env = dict(os.environ)
  if want:
    env['GLIBC_TUNABLES'] = want
  else:
    env.pop('GLIBC_TUNABLES', None)
  # `python -m scripts.bench` runs again as a module, so the repository root stays importable.
  spec = globals().get('__spec__')
  argv = ['-m', spec.name] if spec is not None and spec.name else [sys.argv[0]]
  os.execve(sys.executable, [sys.executable, *argv, *sys.argv[1:]], env)


if __name__ == '__main__':
  _ARGS = _parse_args()
  _reexec_for_allocator(_ARGS)

# Imported after the re-exec so that the allocator setting applies to them.
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lnorm import _ffi  # noqa: E402
from lnorm import functional as F  # noqa: E402
from lnorm.lab import benchmarking as B  # noqa: E402


@dataclass
class Config:
  quick: bool
  reps: int
  sections: list[str]


@dataclass
class Section:
  title: str
  markdown: str
  records: list[dict[str, Any]] = field(default_factory=list)
  targets: list[dict[str, Any]] = field(default_factory=list)
  #: The 1-minute load average when the section started and when it ended.
  load: tuple[float, float] | None = None


def _target(
  name: str, value: float, limit: float, note: str = '', at_least: bool = False
) -> dict[str, Any]:
  """A target ``value <= limit`` (or ``value >= limit`` when ``at_least``)."""
  return {
    'target': name,
    'value': round(value, 3),
    'limit': limit,
    'op': '>=' if at_least else '<=',
    'met': value >= limit if at_least else value <= limit,
    'note': note,
  }


# ----------------------------------------------------------------------------
# Layer norm


def _vjp_all(fn):
  """``(x, scale, bias, dy) -> (y, dx, dscale, dbias)``: a forward and backward pass."""

  def run(x, scale, bias, dy):
    y, pullback = jax.vjp(fn, x, scale, bias)
    return (y, *pullback(dy))

  return run


def _flax_layer_norm(dtype):
  module = nn.LayerNorm(epsilon=F.DEFAULT_EPS, dtype=dtype, param_dtype=jnp.float32)
  return lambda x, s, b: module.apply({'params': {'scale': s, 'bias': b}}, x)


def _layer_norm_xla_path(x, s, b):
  """``lnorm.layer_norm`` without the C++ CPU kernel: its XLA path, CPU-tuned fusions.

  ``layer_norm_fusion('cpu')`` is what the default mode compiles to on CPU where the
  kernel does not run (float32 takes the kernel by default; bfloat16 is the same either way).
  """
  with F.layer_norm_fusion('cpu'):
    return F.layer_norm(x, s, b)


def _layer_norm_fns(dtype):
  """name -> (kind, function of (x, s, b) or (x, s, b, dy)) for one input dtype."""
  f32 = jnp.float32
  ours = lambda x, s, b: F.layer_norm(x, s, b)  # noqa: E731
  reference = lambda x, s, b: F.layer_norm_reference(x, s, b)  # noqa: E731
  flax_ln = _flax_layer_norm(dtype)
  # The kernel runs only for float32: for bfloat16 these rows would repeat 'ours'.
  xla_path = (
    {
      'fwd ours (XLA path)': ('fwd', _layer_norm_xla_path),
      'fwd+bwd ours (XLA path)': ('fwdbwd', _vjp_all(_layer_norm_xla_path)),
    }
    if jnp.dtype(dtype) == jnp.float32
    else {}
  )
  return {
    'fwd ours': ('fwd', ours),
    **xla_path,
    'fwd flax': ('fwd', flax_ln),
    'fwd same-bytes op': ('fwd', lambda x, s, b: (x.astype(f32) * s + b).astype(x.dtype)),
    'fwd+bwd ours': ('fwdbwd', _vjp_all(ours)),
    'fwd+bwd autodiff': ('fwdbwd', _vjp_all(reference)),
    'fwd+bwd flax': ('fwdbwd', _vjp_all(flax_ln)),
    # Reads x and dy, writes y and dx: the bytes an ideal fused LN forward+backward moves.
    'fwd+bwd same-bytes op (x,dy->y,dx)': (
      'fwdbwd',
      lambda x, s, b, dy: (
        (x.astype(f32) * s + b).astype(x.dtype),
        (dy.astype(f32) * x.astype(f32) * s + b).astype(x.dtype),
      ),
    ),
    # Reads x and dy, writes dx: a backward pass alone, at the floor.
    'fwd+bwd same-bytes op (x,dy->dx)': (
      'fwdbwd',
      lambda x, s, b, dy: (dy.astype(f32) * x.astype(f32) * s + b).astype(x.dtype),
    ),
  }


def _torch_layer_norm_fns(x, s, b, dy):
  """name -> (kind, callable of no arguments): ``torch.nn.functional.layer_norm``, eager.

  Forward under ``torch.no_grad()``; forward+backward: the output and
  ``torch.autograd.grad`` for x, the gains and the biases with a given ``dy``.
  Float32 gains and biases for every input dtype (PyTorch's CPU kernel takes
  bfloat16 input with float32 parameters), eps 1e-5.
  """
  import numpy as np
  import torch

  def to_torch(a, dtype):
    return torch.from_numpy(np.asarray(a.astype(jnp.float32))).to(dtype)

  tdt = torch.bfloat16 if x.dtype == jnp.bfloat16 else torch.float32
  xt, dyt = to_torch(x, tdt), to_torch(dy, tdt)
  st, bt = to_torch(s, torch.float32), to_torch(b, torch.float32)
  shape = (x.shape[-1],)
  ln = torch.nn.functional.layer_norm

  def fwd():
    with torch.no_grad():
      return ln(xt, shape, st, bt, F.DEFAULT_EPS)

  xg, sg, bg = (t.clone().requires_grad_(True) for t in (xt, st, bt))

  def fwdbwd():
    y = ln(xg, shape, sg, bg, F.DEFAULT_EPS)
    return (y.detach(), *torch.autograd.grad(y, (xg, sg, bg), dyt))

  try:
    fwdbwd()
  except RuntimeError:  # An older PyTorch without mixed-dtype layer norm: bfloat16 parameters.
    st, bt = st.to(tdt), bt.to(tdt)
    xg, sg, bg = (t.clone().requires_grad_(True) for t in (xt, st, bt))
  return {'fwd torch': ('fwd', fwd), 'fwd+bwd torch': ('fwdbwd', fwdbwd)}


def _bytes_moved(name: str, n: int, itemsize: int) -> int:
  if name.startswith('fwd+bwd'):
    return (3 if '(x,dy->dx)' in name else 4) * n * itemsize
  return 2 * n * itemsize


def section_layer_norm(cfg: Config) -> Section:
  import torch

  torch.set_num_threads(B.machine_info()['cores'])
  big = (16384, 1024) if cfg.quick else (65536, 1024)
  # The last: a transformer's activations (batch 64, 128 tokens, width 768).
  shapes = [(4096, 512), big, (64, 128, 768)]
  dtypes = [jnp.float32, jnp.bfloat16]
  header = [
    'shape',
    'dtype',
    'function',
    'median ms',
    'CPU ms',
    'vs flax',
    'vs same-bytes op',
    'vs torch',
    'GB/s',
    'compile s',
    'XLA temp',
    'XLA peak',
    'saved for bwd',
  ]
  rows, records, targets = [], [], []
  for shape in shapes:
    for dtype in dtypes:
      keys = jax.random.split(jax.random.key(0), 4)
      x = (jax.random.normal(keys[0], shape) * 2 + 1).astype(dtype)
      dy = jax.random.normal(keys[1], shape).astype(dtype)
      s = 1 + 0.1 * jax.random.normal(keys[2], shape[-1:])
      b = 0.1 * jax.random.normal(keys[3], shape[-1:])
      fns = _layer_norm_fns(dtype)
      compiled = []
      residuals = {}
      for name, (kind, fn) in fns.items():
        args = (x, s, b) if kind == 'fwd' else (x, s, b, dy)
        compiled.append(B.compile_fn(name, fn, *args))
      for name, (_, fn) in _torch_layer_norm_fns(x, s, b, dy).items():
        compiled.append(B.eager(name, fn))
      for name, (_, fn) in fns.items():
        if name.startswith('fwd ') and not name.startswith('fwd same-bytes'):
          residuals['fwd+bwd' + name[len('fwd') :]] = B.residual_bytes(fn, x, s, b)
      residuals['fwd+bwd autodiff'] = B.residual_bytes(
        lambda x, s, b: F.layer_norm_reference(x, s, b), x, s, b
      )
      timings = B.time_interleaved(compiled, reps=cfg.reps, min_seconds=0 if cfg.quick else 3)
      n = x.size
      itemsize = jnp.dtype(dtype).itemsize
      med = {k: t.median for k, t in timings.items()}
      for c in compiled:
        t = timings[c.name]
        fwdbwd = c.name.startswith('fwd+bwd')
        flax_ref = med['fwd+bwd flax' if fwdbwd else 'fwd flax']
        ew_ref = med['fwd+bwd same-bytes op (x,dy->y,dx)' if fwdbwd else 'fwd same-bytes op']
        gbs = _bytes_moved(c.name, n, itemsize) / t.median / 1e9
        is_torch = 'torch' in c.name
        rows.append(
          [
            'x'.join(map(str, shape)),
            jnp.dtype(dtype).name,
            c.name,
            B.fmt_ms(t.median),
            B.fmt_ms(t.cpu_median),
            B.ratio(t.median, flax_ref),
            B.ratio(t.median, ew_ref),
            B.ratio(t.median, med['fwd+bwd torch' if fwdbwd else 'fwd torch']),
            f'{gbs:.1f}',
            '' if is_torch else f'{c.compile_s:.2f}',
            '' if is_torch else B.fmt_bytes(c.memory.get('temp', 0)),
            '' if is_torch else B.fmt_bytes(c.memory.get('peak', 0)),
            B.fmt_bytes(residuals[c.name]) if c.name in residuals else '',
          ]
        )
        records.append(
          {
            'section': 'layer_norm',
            'shape': list(shape),
            'dtype': jnp.dtype(dtype).name,
            'function': c.name,
            'median_s': t.median,
            'cpu_median_s': t.cpu_median,
            'wall_s': t.wall,
            'vs_flax': t.median / flax_ref,
            'vs_same_bytes_op': t.median / ew_ref,
            'vs_torch': t.median / med['fwd+bwd torch' if fwdbwd else 'fwd torch'],
            'gb_per_s': gbs,
            'compile_s': c.compile_s,
            'memory': c.memory,
            'residual_bytes': residuals.get(c.name),
          }
        )
      if dtype == jnp.float32:
        tag = f'{"x".join(map(str, shape))} float32'
        targets += [
          _target(
            f'LN fwd+bwd / flax fwd+bwd, {tag}',
            med['fwd+bwd ours'] / med['fwd+bwd flax'],
            0.6,
            f'XLA path / flax: {med["fwd+bwd ours (XLA path)"] / med["fwd+bwd flax"]:.2f}x; '
            'ours / XLA path: '
            f'{med["fwd+bwd ours"] / med["fwd+bwd ours (XLA path)"]:.2f}x',
          ),
          _target(
            f'LN fwd+bwd / same-bytes op (x,dy->y,dx), {tag}',
            med['fwd+bwd ours'] / med['fwd+bwd same-bytes op (x,dy->y,dx)'],
            1.5,
            f'vs (x,dy->dx): {med["fwd+bwd ours"] / med["fwd+bwd same-bytes op (x,dy->dx)"]:.2f}x',
          ),
          _target(
            f'LN fwd / flax fwd, {tag}',
            med['fwd ours'] / med['fwd flax'],
            1.0,
            f'XLA path / flax: {med["fwd ours (XLA path)"] / med["fwd flax"]:.2f}x; '
            f'ours / XLA path: {med["fwd ours"] / med["fwd ours (XLA path)"]:.2f}x',
          ),
          _target(
            f'LN fwd+bwd / torch fwd+bwd, {tag}',
            med['fwd+bwd ours'] / med['fwd+bwd torch'],
            1.0,
            f'fwd / torch fwd: {med["fwd ours"] / med["fwd torch"]:.2f}x',
          ),
        ]
  md = '\n'.join(
    [
      'Forward: `y = layer_norm(x, scale, bias)` over the last axis. Forward+backward:',
      '`y` and the gradients for x, scale and bias from `jax.vjp` with a given `dy`,',
      'in one jitted function. "autodiff" is JAX autodiff of the same two-pass',
      'formula (`lnorm.functional.layer_norm_reference`). Same-bytes ops: forward',
      '`y = x * s + b` (reads x, writes y); forward+backward `(y, dx) = (x*s+b,',
      'dy*x*s+b)` (reads x, dy; writes y, dx: what an ideal fused LN forward+backward',
      'moves) and `dx = dy*x*s+b` (reads x, dy; writes dx). Math in float32, input',
      'and output in the listed dtype. GB/s counts those minimal bytes. "CPU ms" is',
      'process CPU time (all threads), less sensitive to other load. "XLA temp" and',
      '"XLA peak" come from `compiled.memory_analysis()`; "saved for bwd" is the',
      "size of the residuals reverse mode keeps (the leaves of `jax.vjp`'s",
      'pullback, the input x included). "torch": `torch.nn.functional.layer_norm`,',
      'eager, with as many threads as cores (`torch.set_num_threads`), forward',
      'under `no_grad`, forward+backward with `torch.autograd.grad` for x and the',
      'float32 gains and biases; "vs torch" is against its forward or forward+backward.',
      'The 3-D shape is a transformer-sized activation (batch 64, 128 tokens, width',
      '768), normalized over the last axis. "ours" runs the C++ CPU kernel for float32',
      '(`lnorm/csrc/layer_norm.cc`: one pass forward, one backward); "ours (XLA path)"',
      "is the same function without it (`layer_norm_fusion('cpu')`, what",
      '`LNORM_LAYER_NORM_KERNEL=xla` or a machine without a compiler gets).',
      '',
      B.markdown_table(header, rows),
    ]
  )
  return Section('Layer norm', md, records, targets)


# ----------------------------------------------------------------------------
# Recurrent cells


def _lstm_hoisted(hidden: int, naive: bool = False):
  """LN-LSTM (``lnorm.recurrent.LSTMCell(norm='layer')`` parameters) with ``LN(W_x x_t) + b``
  computed for all time steps in one matmul and one layer norm before the time loop.

  ``naive``: ``x @ W_x`` in ``[batch, time, 4H]`` then swapped to time-major (a
  transpose of the large array), and the scan reads step ``t`` as its ``xs``.
  Otherwise ``x`` (the small side) is made time-major before the matmul, and
  the loop carries the next step's slice: XLA fuses a scan's ``xs`` slice
  into the element-wise gate fusions that read it, and those compile to
  scalar code (no vector instructions in their LLVM IR) where the same
  fusions reading a plain buffer are vectorized.
  """

  def apply(variables, x):  # x: [batch, time, in]
    p = variables['params']['cell']

    def ln(v, name):
      return F.layer_norm(v, p[name]['scale'], p[name]['bias'])

    if naive:
      wx = jnp.swapaxes(ln(x @ p['input_kernel'], 'ln_x') + p['bias'], 0, 1)
    else:
      wx = ln(jnp.swapaxes(x, 0, 1) @ p['input_kernel'], 'ln_x') + p['bias']

    def cell(c, h, wx_t):
      f, i, o, g = jnp.split(ln(h @ p['recurrent_kernel'], 'ln_h') + wx_t, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      return c, jax.nn.sigmoid(o) * jnp.tanh(ln(c, 'ln_c'))

    zeros = jnp.zeros((x.shape[0], hidden), x.dtype)
    if naive:

      def step(carry, wx_t):
        c, h = cell(*carry, wx_t)
        return (c, h), h

      _, hs = jax.lax.scan(step, (zeros, zeros), wx)
    else:

      def step(carry, t):
        c, h = cell(*carry)
        nxt = jax.lax.dynamic_index_in_dim(wx, jnp.minimum(t + 1, wx.shape[0] - 1), keepdims=False)
        return (c, h, nxt), h

      _, hs = jax.lax.scan(step, (zeros, zeros, wx[0]), jnp.arange(wx.shape[0]))
    return jnp.swapaxes(hs, 0, 1)

  return apply


@contextlib.contextmanager
def _kernels_off(off: bool):
  """Traces inside take lnorm's XLA paths (no CPU kernels) when ``off``."""
  saved = os.environ.get(_ffi.ENV_SWITCH)
  if off:
    os.environ[_ffi.ENV_SWITCH] = 'xla'
  try:
    yield
  finally:
    if saved is None:
      os.environ.pop(_ffi.ENV_SWITCH, None)
    else:
      os.environ[_ffi.ENV_SWITCH] = saved


def _torch_rnn_fns(module, x, dy):
  """``(fwd, fwdbwd)`` callables of no arguments for a PyTorch RNN module (eager)."""
  import numpy as np
  import torch

  xt = torch.from_numpy(np.asarray(x)).requires_grad_(True)
  dyt = torch.from_numpy(np.asarray(dy))
  params = list(module.parameters())

  def fwd():
    with torch.no_grad():
      return module(xt)

  def fwdbwd():
    y = module(xt)
    return (y.detach(), *torch.autograd.grad(y, [xt, *params], dyt))

  return fwd, fwdbwd


def section_rnn(cfg: Config) -> Section:
  import torch

  from lnorm import recurrent as R
  from scripts.bench_steps import torch_rnn

  torch.set_num_threads(B.machine_info()['cores'])
  torch.manual_seed(0)
  settings = [(32, 100, 128, 256)] if cfg.quick else [(32, 100, 128, 256), (64, 100, 256, 512)]
  header = [
    'batch, T, in, H',
    'model',
    'fwd ms',
    'fwd vs flax',
    'fwd+bwd ms',
    'fwd+bwd vs flax',
    'fwd+bwd CPU ms',
    'compile s (fwd+bwd)',
    'XLA temp (fwd+bwd)',
  ]
  rows, records, targets = [], [], []
  for batch, steps, n_in, hidden in settings:
    x = jax.random.normal(jax.random.key(0), (batch, steps, n_in))
    dy = jax.random.normal(jax.random.key(1), (batch, steps, hidden))
    models = {
      'flax OptimizedLSTMCell': ('lstm', nn.RNN(nn.OptimizedLSTMCell(hidden))),
      "ours LSTM norm='none'": ('lstm', nn.RNN(R.LSTMCell(hidden, norm='none'))),
      "ours LSTM norm='layer'": ('lstm', nn.RNN(R.LSTMCell(hidden, norm='layer'))),
      'flax GRUCell': ('gru', nn.RNN(nn.GRUCell(hidden))),
      "ours GRU norm='none'": ('gru', nn.RNN(R.GRUCell(hidden, norm='none'))),
      "ours GRU norm='layer'": ('gru', nn.RNN(R.GRUCell(hidden, norm='layer'))),
      # The same cells with the fused CPU kernels switched off (the step as XLA ops).
      "ours LSTM norm='layer' (XLA path)": ('lstm', nn.RNN(R.LSTMCell(hidden, norm='layer'))),
      "ours GRU norm='layer' (XLA path)": ('gru', nn.RNN(R.GRUCell(hidden, norm='layer'))),
    }
    applies, params = {}, {}
    for name, (_, module) in models.items():
      params[name] = module.init(jax.random.key(2), x)
      applies[name] = module.apply
    hoisted = {
      "ours LSTM norm='layer', input projection hoisted": False,
      "ours LSTM norm='layer', input projection hoisted (naive)": True,
    }
    for name_hoist, naive in hoisted.items():
      models[name_hoist] = ('lstm', None)
      params[name_hoist] = params["ours LSTM norm='layer'"]
      applies[name_hoist] = _lstm_hoisted(hidden, naive)
      # Rounding differences grow along the sequence; the first steps must agree closely.
      check = jnp.abs(
        applies[name_hoist](params[name_hoist], x[:, :10])
        - applies["ours LSTM norm='layer'"](params[name_hoist], x[:, :10])
      ).max()
      assert float(check) < 1e-4, f'hoisted LN-LSTM differs from the cell by {float(check)}'

    compiled = []
    for name, apply in applies.items():
      with _kernels_off(name.endswith('(XLA path)')):
        compiled.append(B.compile_fn(f'{name} | fwd', apply, params[name], x))

        def fwdbwd(p, x, dy, apply=apply):
          y, pullback = jax.vjp(apply, p, x)
          return y, *pullback(dy)

        compiled.append(B.compile_fn(f'{name} | fwd+bwd', fwdbwd, params[name], x, dy))
    torch_models = {
      'torch nn.LSTM': ('lstm', 'none'),
      'torch LN-LSTM (hand-written)': ('lstm', 'layer'),
      'torch nn.GRU': ('gru', 'none'),
      'torch LN-GRU (hand-written)': ('gru', 'layer'),
    }
    for name, (kind, norm) in torch_models.items():
      models[name] = (kind, None)
      fwd, fwdbwd = _torch_rnn_fns(torch_rnn.rnn(kind, norm, n_in, hidden), x, dy)
      compiled += [B.eager(f'{name} | fwd', fwd), B.eager(f'{name} | fwd+bwd', fwdbwd)]
    timings = B.time_interleaved(compiled, reps=cfg.reps, min_seconds=0 if cfg.quick else 3)
    by = {c.name: c for c in compiled}
    med = {k: t.median for k, t in timings.items()}
    for name, (kind, _) in models.items():
      flax_name = 'flax OptimizedLSTMCell' if kind == 'lstm' else 'flax GRUCell'
      f, fb = med[f'{name} | fwd'], med[f'{name} | fwd+bwd']
      ff, ffb = med[f'{flax_name} | fwd'], med[f'{flax_name} | fwd+bwd']
      c = by[f'{name} | fwd+bwd']
      is_torch = name.startswith('torch')
      rows.append(
        [
          f'{batch}, {steps}, {n_in}, {hidden}',
          name,
          B.fmt_ms(f),
          B.ratio(f, ff),
          B.fmt_ms(fb),
          B.ratio(fb, ffb),
          B.fmt_ms(timings[f'{name} | fwd+bwd'].cpu_median),
          '' if is_torch else f'{c.compile_s:.2f}',
          '' if is_torch else B.fmt_bytes(c.memory.get('temp', 0)),
        ]
      )
      records.append(
        {
          'section': 'rnn',
          'setting': [batch, steps, n_in, hidden],
          'model': name,
          'fwd_median_s': f,
          'fwdbwd_median_s': fb,
          'fwd_vs_flax': f / ff,
          'fwdbwd_vs_flax': fb / ffb,
          'fwdbwd_cpu_median_s': timings[f'{name} | fwd+bwd'].cpu_median,
          'compile_s': None if is_torch else c.compile_s,
          'memory': None if is_torch else c.memory,
        }
      )
    size = f'{batch}x{steps}x{n_in}x{hidden}'
    hoist = "ours LSTM norm='layer', input projection hoisted"
    xla_lstm, xla_gru = "ours LSTM norm='layer' (XLA path)", "ours GRU norm='layer' (XLA path)"
    lstm, gru = med["ours LSTM norm='layer' | fwd+bwd"], med["ours GRU norm='layer' | fwd+bwd"]
    flax_lstm, flax_gru = med['flax OptimizedLSTMCell | fwd+bwd'], med['flax GRUCell | fwd+bwd']
    targets += [
      _target(
        f'LN-LSTM fwd+bwd / flax OptimizedLSTMCell fwd+bwd, {size}',
        lstm / flax_lstm,
        1.10,
        f'hoisted: {med[hoist + " | fwd+bwd"] / flax_lstm:.2f}x, naive hoisted: '
        f'{med[hoist + " (naive) | fwd+bwd"] / flax_lstm:.2f}x; XLA path (no fused kernel): '
        f'{med[xla_lstm + " | fwd+bwd"] / flax_lstm:.2f}x; vs torch LN-LSTM: '
        f'{lstm / med["torch LN-LSTM (hand-written) | fwd+bwd"]:.2f}x',
      ),
      _target(
        f'LN-GRU fwd+bwd / flax GRUCell fwd+bwd, {size}',
        gru / flax_gru,
        1.10,
        f'XLA path (no fused kernel): {med[xla_gru + " | fwd+bwd"] / flax_gru:.2f}x; '
        f'vs torch LN-GRU: {gru / med["torch LN-GRU (hand-written) | fwd+bwd"]:.2f}x',
      ),
    ]
  md = '\n'.join(
    [
      'Each model is `nn.RNN(cell)` over `x: [batch, T, in]` (float32), forward and',
      'forward+backward (`jax.vjp` for the parameters and x with a given cotangent)',
      "in one jitted function. Ratios are against Flax's cell of the same kind",
      '(no normalization). The LN cells run their state update as one fused CPU kernel',
      'forward and one backward (`lnorm.fused_cells`); "(XLA path)" is the same cell with',
      'the kernels switched off (`LNORM_LAYER_NORM_KERNEL=xla`). The hoisted LN-LSTM is',
      'the same model written with',
      '`LN(W_x x_t) + b` for all steps computed before the `lax.scan` (checked equal',
      'to the cell to 1e-4 over the first 10 steps): "naive" as first written (the',
      'projection made in `[batch, T, 4H]` and transposed, the scan slicing it),',
      "the other with `x` made time-major before the matmul and the next step's",
      'slice carried through the loop (see `_lstm_hoisted` in `scripts/bench.py`).',
      'PyTorch peers (eager, as many threads as cores): `torch.nn.LSTM`/`nn.GRU` for',
      "the plain cells; the paper's LN-LSTM / LN-GRU written by hand, with the input",
      'projection and its layer norm for all steps at once and a Python loop over',
      'the steps.',
      '',
      B.markdown_table(header, rows),
    ]
  )
  return Section('Recurrent cells', md, records, targets)


# ----------------------------------------------------------------------------
# Skip-thoughts training step


def _training_step_section(spec, cfg: Config, targets_of=None) -> Section:
  """A recurrent experiment's training step (a :class:`scripts.bench_steps.StepBench`).

  For every norm of ``spec``: examples/s of our real jitted step and of its PyTorch
  peer (eager, as many threads as cores), timed interleaved; the model's matmul
  FLOP/s (3x the forward's per example) as a fraction of the f32 matmul rate
  measured in the same process. ``targets_of(measured) -> list`` adds targets from
  ``measured[(impl, norm)] = {'examples_per_s', 'flops_fraction', ...}``.
  """
  import torch

  cores = B.machine_info()['cores']
  matmul = _machine_rates(cfg)['matmul']
  runners, steps, compile_s = {}, {}, {}
  for norm in spec.norms:
    t0 = time.perf_counter()
    step = spec.ours(norm, cfg.quick)
    step.run()
    compile_s[norm] = time.perf_counter() - t0
    steps[norm] = step
    runners[('ours', norm)] = step.run
    runners[('torch eager', norm)] = spec.torch(norm, step, cores)
  reps = 3 if cfg.quick else max(5, cfg.reps // 2 + 1)
  timings = B.time_stateful(
    {f'{impl} {norm}': run for (impl, norm), run in runners.items()}, reps=reps, target_s=0.5
  )
  torch.set_num_threads(cores)
  measured, rows, records = {}, [], []
  for (impl, norm), _ in runners.items():
    step, t = steps[norm], timings[f'{impl} {norm}']
    per_call = step.steps_per_call if impl == 'ours' else 1
    s_step = t.median / per_call
    ex = step.batch_size / s_step
    flops = 3 * step.forward_flops
    measured[(impl, norm)] = {
      'examples_per_s': ex,
      'flops_fraction': flops * ex / matmul,
      'model_flops_per_s': flops * ex,
    }
    records.append(
      {
        'section': spec.title,
        'norm': norm,
        'impl': impl,
        'batch': step.batch_size,
        'steps_per_call': per_call,
        'examples_per_s': ex,
        'step_s': s_step,
        'cpu_step_s': t.cpu_median / per_call,
        'wall_s': t.wall,
        'num_params': step.num_params,
        'train_flops_per_example': flops,
        'model_flops_per_s': flops * ex,
        'matmul_flops_per_s': matmul,
        'compile_s': compile_s[norm] if impl == 'ours' else None,
      }
    )
  for (impl, norm), m in measured.items():
    ours = measured[('ours', norm)]['examples_per_s']
    rows.append(
      [
        norm,
        impl,
        f'{m["examples_per_s"]:,.1f}',
        f'{steps[norm].batch_size / m["examples_per_s"] * 1e3:.1f}',
        B.ratio(ours, m['examples_per_s']),
        f'{m["flops_fraction"]:.0%}',
        f'{compile_s[norm]:.1f}' if impl == 'ours' else '',
      ]
    )
  first = steps[spec.norms[0]]
  header = [
    'norm', 'implementation', f'{spec.unit}/s', 'ms/step', 'ours / this', 'FLOP/s vs matmul',
    'compile s',
  ]  # fmt: skip
  params = ', '.join(f'{norm} {steps[norm].num_params:,}' for norm in spec.norms)
  md = '\n'.join(
    [
      *spec.description,
      '',
      f'Batch {first.batch_size} {spec.unit}, {first.steps_per_call} steps per jitted call',
      f'(ours; state donated, metrics fetched each call); parameters: {params}. "FLOP/s vs',
      f'matmul" counts {3 * first.forward_flops / 1e9:.3g} GFLOP per example',
      f'({spec.norms[0]}; 3x the forward matmuls) against the f32 matmul rate measured in',
      f'the same process ({matmul / 1e9:.1f} GFLOP/s, 2048^3). Medians of {reps} interleaved',
      'repetitions of about 0.5 s of calls each, after warm-up.',
      '',
      B.markdown_table(header, rows),
    ]
  )
  targets = targets_of(measured) if targets_of else []
  records.append({'section': spec.title, 'matmul_flops_per_s': matmul})
  return Section(spec.title, md, records, targets)


def _skip_thoughts_targets(m) -> list[dict[str, Any]]:
  """The issue's skip-thoughts targets: 1.5x PyTorch, 60% of the matmul rate, LN / plain."""
  ex = {k: v['examples_per_s'] for k, v in m.items()}
  targets = [
    _target(
      f'skip-thoughts ours / torch eager, size=cpu, norm={norm}',
      ex[('ours', norm)] / ex[('torch eager', norm)],
      1.5,
      f'{ex[("ours", norm)]:.1f} vs {ex[("torch eager", norm)]:.1f} triples/s',
      True,
    )
    for norm in ('none', 'layer')
  ]
  frac = m[('ours', 'layer')]['flops_fraction']
  targets.append(
    _target(
      'skip-thoughts model FLOP/s / matmul FLOP/s, size=cpu, norm=layer',
      frac,
      0.6,
      f'{m[("ours", "layer")]["model_flops_per_s"] / 1e9:.1f} GFLOP/s; '
      f'norm=none: {m[("ours", "none")]["flops_fraction"]:.0%}',
      True,
    )
  )
  targets.append(
    _target(
      'skip-thoughts step, LN / plain, size=cpu', ex[('ours', 'none')] / ex[('ours', 'layer')], 1.10
    )
  )
  return targets


def section_skip_thoughts(cfg: Config) -> Section:
  from scripts.bench_steps import skip_thoughts

  return _training_step_section(skip_thoughts.SPEC, cfg, _skip_thoughts_targets)


def _experiment_section(name: str):
  """``section_<name>``: the training step of ``scripts/bench_steps/<name>.py``'s SPEC."""

  def section(cfg: Config) -> Section:
    import importlib

    return _training_step_section(importlib.import_module(f'scripts.bench_steps.{name}').SPEC, cfg)

  return section


# ----------------------------------------------------------------------------
# Allocator


def section_alloc_probe(cfg: Config) -> Section:
  """Two timings the ``allocator`` section compares across processes."""
  shape = (16384, 1024) if cfg.quick else (65536, 1024)
  x = jax.random.normal(jax.random.key(0), shape)
  dy = jax.random.normal(jax.random.key(1), shape)
  s, b = jnp.ones(shape[-1]), jnp.zeros(shape[-1])
  fns = _layer_norm_fns(jnp.float32)
  compiled = [
    B.compile_fn(name, fns[name][1], x, s, b, dy)
    for name in ('fwd+bwd same-bytes op (x,dy->y,dx)', 'fwd+bwd ours')
  ]
  timings = B.time_interleaved(compiled, reps=max(3, cfg.reps // 2))
  records = [
    {'function': k, 'shape': list(shape), 'median_s': t.median, 'cpu_median_s': t.cpu_median}
    for k, t in timings.items()
  ]
  return Section('alloc_probe', '', records)


def section_allocator(cfg: Config) -> Section:
  results = {}
  for setting in ('default', 'hugetlb'):
    with tempfile.TemporaryDirectory() as tmp:
      out = Path(tmp) / 'probe'
      # As a module from the repository root, as the run book runs it (scripts.* imports).
      cmd = [sys.executable, '-m', 'scripts.bench', '--sections=alloc_probe']
      cmd += [f'--allocator={setting}']
      cmd += ['--out', str(out), f'--reps={cfg.reps}'] + (['--quick'] if cfg.quick else [])
      subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
      results[setting] = json.loads(out.with_suffix('.json').read_text())['records']
  rows, records = [], []
  for i, rec in enumerate(results['default']):
    hug = results['hugetlb'][i]
    rows.append(
      [
        rec['function'],
        'x'.join(map(str, rec['shape'])),
        B.fmt_ms(rec['median_s']),
        B.fmt_ms(hug['median_s']),
        B.ratio(rec['median_s'], hug['median_s']),
      ]
    )
    records.append({'section': 'allocator', 'default': rec, 'hugetlb': hug})
  md = '\n'.join(
    [
      'The same jitted functions (float32) in two child processes, one after the',
      'other: glibc malloc as is, and with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`.',
      'Across processes, so only large differences mean anything.',
      '',
      B.markdown_table(
        ['function', 'shape', 'default malloc ms', 'hugetlb ms', 'default / hugetlb'], rows
      ),
    ]
  )
  return Section('Allocator', md, records)


# ----------------------------------------------------------------------------
# pMNIST training throughput


def _pmnist_ours(norm: str, batch: int, steps_per_call: int):
  """(run, num_params): one call of the real chunked training step (donated state)."""
  import numpy as np

  from experiments import pmnist
  from scripts.bench_steps import chunk_runner

  config = _pmnist_config(norm, batch)
  model = pmnist.make_model(config)
  rng = np.random.default_rng(0)
  batches = {
    'image': rng.random((steps_per_call, batch, pmnist.NUM_PIXELS), np.float32),
    'label': rng.integers(0, pmnist.NUM_CLASSES, (steps_per_call, batch), np.int32),
  }
  return chunk_runner(model.init, pmnist.make_loss_fn(model), config, batches)


def _pmnist_config(norm: str, batch: int):
  from configs.pmnist import get_config

  return get_config(f'norm={norm},batch_size={batch}')


def _pmnist_torch(norm: str, batch: int, threads: int, compile_model: bool):
  """One call = one step of a plain PyTorch loop on the same model and optimizer."""
  import torch

  steps_per_call = 16

  torch.manual_seed(0)
  layers, n_in = [], 784
  for width in (1000, 1000):
    linear = torch.nn.Linear(n_in, width, bias=norm == 'none')
    torch.nn.init.trunc_normal_(linear.weight, std=n_in**-0.5)  # ~ lecun_normal
    layers.append(linear)
    if norm == 'layer':
      layers.append(torch.nn.LayerNorm(width, eps=1e-5))
    elif norm == 'batch':
      layers.append(torch.nn.BatchNorm1d(width, eps=1e-5))
    layers.append(torch.nn.ReLU())
    n_in = width
  layers.append(torch.nn.Linear(n_in, 10))
  for layer in layers:
    if isinstance(layer, torch.nn.Linear) and layer.bias is not None:
      torch.nn.init.zeros_(layer.bias)
  model = torch.nn.Sequential(*layers).train()
  opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
  forward = torch.compile(model) if compile_model else model
  gen = torch.Generator().manual_seed(0)
  images = torch.rand((steps_per_call, batch, 784), generator=gen)
  labels = torch.randint(0, 10, (steps_per_call, batch), generator=gen)

  step = [0]

  def run():
    torch.set_num_threads(threads)
    i = step[0] = (step[0] + 1) % steps_per_call
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(forward(images[i]), labels[i])
    loss.backward()
    opt.step()

  return run


def _machine_rates(cfg: Config) -> dict[str, Any]:
  """The machine's f32 matmul rate (FLOP/s) and memory bandwidth (B/s), measured now.

  ``matmul``: 2048x2048 @ 2048x2048; ``copy``: ``x + 1`` over 2^25 floats (2
  arrays moved); ``axpy``: ``1.5 x + y`` (3 arrays).
  """
  n = 2**25
  a = jax.random.normal(jax.random.key(0), (2048, 2048))
  x = jax.random.normal(jax.random.key(1), (n,))
  y = jax.random.normal(jax.random.key(2), (n,))
  probes = [
    B.compile_fn('matmul 2048^3', lambda a, b: a @ b, a, a),
    B.compile_fn('copy x+1', lambda x: x + 1.0, x),
    B.compile_fn('axpy 1.5x+y', lambda x, y: 1.5 * x + y, x, y),
  ]
  pt = B.time_interleaved(probes, reps=cfg.reps, min_seconds=0 if cfg.quick else 2)
  return {
    'matmul': 2 * 2048**3 / pt['matmul 2048^3'].median,
    'copy': 2 * n * 4 / pt['copy x+1'].median,
    'axpy': 3 * n * 4 / pt['axpy 1.5x+y'].median,
    'probe_median_s': {k: t.median for k, t in pt.items()},
  }


def section_pmnist(cfg: Config) -> Section:
  import torch

  cores = B.machine_info()['cores']
  torch.set_num_threads(cores)
  norms = ('none', 'layer') if cfg.quick else ('none', 'layer', 'batch')
  # Steps per call: the experiment's default at batch 128, 100 at batch 4.
  settings = ((128, _pmnist_config('layer', 128).steps_per_call), (4, 100))
  target_s = 0.25 if cfg.quick else 0.6

  rates = _machine_rates(cfg)
  matmul_flops, bw_copy, bw_axpy = rates['matmul'], rates['copy'], rates['axpy']
  bandwidth = max(bw_copy, bw_axpy)

  rows, records, targets = [], [], []
  compile_notes = []
  for batch, spc in settings:
    runners, compile_s, steps = {}, {}, {}
    num_params = {}
    for norm in norms:
      t0 = time.perf_counter()
      runners[f'ours {norm}'], num_params[norm] = _pmnist_ours(norm, batch, spc)
      runners[f'ours {norm}']()
      compile_s[f'ours {norm}'] = time.perf_counter() - t0
      steps[f'ours {norm}'] = spc
      runners[f'torch eager {norm}'] = _pmnist_torch(norm, batch, cores, False)
      runners[f'torch eager 1 thread {norm}'] = _pmnist_torch(norm, batch, 1, False)
      if not cfg.quick and norm == 'layer':
        t0 = time.perf_counter()
        try:
          run = _pmnist_torch(norm, batch, cores, True)
          run()
        except Exception as e:  # noqa: BLE001 (reported, not fatal)
          compile_notes.append(f'torch.compile failed ({norm}, batch {batch}): {e!r:.200}')
        else:
          runners[f'torch.compile {norm}'] = run
          compile_s[f'torch.compile {norm}'] = time.perf_counter() - t0
    timings = B.time_stateful(runners, reps=cfg.reps, target_s=target_s)
    torch.set_num_threads(cores)
    ex = {k: batch * steps.get(k, 1) / t.median for k, t in timings.items()}
    for norm in norms:
      p = num_params[norm]
      step_s = timings[f'ours {norm}'].median / spc
      flops = 6 * p * batch / step_s
      floor_s = 7 * 4 * p / bandwidth
      for impl in ('ours', 'torch eager', 'torch eager 1 thread', 'torch.compile'):
        name = f'{impl} {norm}'
        if name not in timings:
          continue
        t = timings[name]
        s_step = t.median / steps.get(name, 1)
        rows.append(
          [
            batch,
            norm,
            impl,
            f'{ex[name]:,.0f}',
            f'{s_step * 1e3:.3g}',
            f'{t.cpu_median / steps.get(name, 1) * 1e3:.3g}',
            B.ratio(ex[f'ours {norm}'], ex[name]),
            f'{6 * p * batch / s_step / matmul_flops:.0%}',
            f'{7 * 4 * p / bandwidth / s_step:.0%}',
            f'{compile_s[name]:.1f}' if name in compile_s else '',
          ]
        )
        records.append(
          {
            'section': 'pmnist',
            'batch': batch,
            'steps_per_call': steps.get(name, 1),
            'norm': norm,
            'impl': impl,
            'examples_per_s': ex[name],
            'step_s': s_step,
            'cpu_step_s': t.cpu_median / steps.get(name, 1),
            'wall_s': t.wall,
            'num_params': p,
            'model_flops_per_s': 6 * p * batch / s_step,
            'compile_s': compile_s.get(name),
          }
        )
      ours_vs = ex[f'ours {norm}'] / ex[f'torch eager {norm}']
      note = f'vs torch 1 thread: {ex[f"ours {norm}"] / ex[f"torch eager 1 thread {norm}"]:.2f}x'
      if f'torch.compile {norm}' in ex:
        note += f'; vs torch.compile: {ex[f"ours {norm}"] / ex[f"torch.compile {norm}"]:.2f}x'
      targets.append(
        _target(f'pMNIST ours / torch eager, batch {batch}, {norm}', ours_vs, 1.5, note, True)
      )
      if batch == 128:
        targets.append(
          _target(
            f'pMNIST model FLOP/s / matmul FLOP/s, batch 128, {norm}',
            flops / matmul_flops,
            0.8,
            f'{flops / 1e9:.1f} of {matmul_flops / 1e9:.1f} GFLOP/s (6*P*B per step)',
            True,
          )
        )
      if batch == 4:
        targets.append(
          _target(
            f'pMNIST optimizer-traffic floor / step time, batch 4, {norm}',
            floor_s / step_s,
            0.8,
            f'floor {floor_s * 1e3:.2f} ms (7*4*P B at {bandwidth / 1e9:.1f} GB/s), '
            f'step {step_s * 1e3:.2f} ms',
            True,
          )
        )
  records.append(
    {
      'section': 'pmnist_machine',
      'matmul_flops_per_s': matmul_flops,
      'copy_bytes_per_s': bw_copy,
      'axpy_bytes_per_s': bw_axpy,
      'probe_median_s': rates['probe_median_s'],
    }
  )
  p = num_params['layer']
  header = [
    'batch',
    'norm',
    'implementation',
    'examples/s',
    'ms/step',
    'CPU ms/step',
    'ours / this',
    'FLOP/s vs matmul',
    'Adam-traffic floor / step',
    'compile s',
  ]
  md = '\n'.join(
    [
      f'Training throughput of the pMNIST MLP 784-1000-1000-10 (P = {p:,} parameters',
      "with layer norm) with Adam (lr 1e-3). **ours**: the experiment's real step",
      '(`experiments.pmnist.make_loss_fn` -> `lnorm.lab.runner.make_train_step` ->',
      '`make_train_chunk`: a `lax.scan` of K steps per jitted call, state donated,',
      'metrics and the finiteness flag fetched after each call as `train_loop` does),',
      f'K = {settings[0][1]} at batch 128 (the config default) and {settings[1][1]} at',
      'batch 4, on batches already on the device. **torch eager**: the same model',
      '(no dense bias under a norm, LayerNorm/BatchNorm1d eps 1e-5, truncated-normal',
      'kernels) and `torch.optim.Adam` in a plain loop (`zero_grad`, forward,',
      f'`cross_entropy`, `backward`, `step`), `torch.set_num_threads({cores})`; **torch',
      'eager 1 thread**: the same with `torch.set_num_threads(1)` (on this shared,',
      "loaded machine torch's OpenMP threads wait on each other at every op, so one",
      'thread runs much faster than two). **torch.compile** (layer norm only, to',
      'bound the run time): the loop with `torch.compile(model)` (inductor, C++ on',
      'CPU; the optimizer step stays eager). Medians of interleaved repetitions,',
      f'each about {target_s} s of calls, after warm-up.',
      '',
      'Machine rates in the same process: f32 matmul 2048x2048 @ 2048x2048',
      f'{matmul_flops / 1e9:.1f} GFLOP/s; memory bandwidth {bw_copy / 1e9:.1f} GB/s',
      f'(`x + 1`, 2^25 floats, 2 arrays moved) and {bw_axpy / 1e9:.1f} GB/s (`1.5 x + y`,',
      '3 arrays). "FLOP/s vs matmul" counts 6*P*B FLOPs per step (forward + backward of',
      'the dense layers; the norms, the loss and Adam counted as free; the first',
      "layer's input gradient, 2*784*1000*B, is not needed but is counted) against",
      'the matmul rate. "Adam-traffic floor / step" is the time to move 7*4*P bytes',
      '(read parameters, gradients, both Adam moments; write parameters and moments)',
      'at the larger bandwidth, over the step time; the state (28.7 MB) nearly fits',
      'the 32 MiB L3, so this floor is only a DRAM-bandwidth reference.',
      '',
      B.markdown_table(header, rows),
      *(['', *compile_notes] if compile_notes else []),
    ]
  )
  return Section('pMNIST training throughput', md, records, targets)


#: The other recurrent experiments' training steps (``scripts/bench_steps/<name>.py``).
EXPERIMENT_STEPS = ('attentive_reader', 'draw', 'handwriting', 'order_embeddings')

SECTIONS = {
  'layer_norm': section_layer_norm,
  'rnn': section_rnn,
  'skip_thoughts': section_skip_thoughts,
  **{name: _experiment_section(name) for name in EXPERIMENT_STEPS},
  'pmnist': section_pmnist,
  'allocator': section_allocator,
  'alloc_probe': section_alloc_probe,
}


# ----------------------------------------------------------------------------


def _report(info, sections: list[Section], cfg: Config) -> str:
  targets = [t for s in sections for t in s.targets]
  lines = [
    f'# lnorm benchmark{" (quick)" if cfg.quick else ""}',
    '',
    f'`python -m scripts.bench{" --quick" if cfg.quick else ""}` on {info["date"]}.',
    '',
    f'- CPU: {info["cpu"]}, {info["cores"]} cores, {info["memory_gib"]} GiB; '
    f'devices {", ".join(info["devices"])}',
    f'- {B.load_note(info)}',
    '- versions: ' + ', '.join(f'{k} {v}' for k, v in info['versions'].items()),
    f'- python {info["python"]}; GLIBC_TUNABLES={info["GLIBC_TUNABLES"]!r}; '
    f'XLA_FLAGS={info["XLA_FLAGS"]!r}',
    f'- medians of {cfg.reps}+ interleaved repetitions after compilation and one warm-up call',
    '',
  ]
  if targets:
    lines += ['## Targets', '']
    lines.append(
      B.markdown_table(
        ['target', 'measured', 'limit', 'met', 'load', 'note'],
        [
          [
            t['target'],
            f'{t["value"]:.2f}x',
            f'{"≥" if t.get("op") == ">=" else "≤"} {t["limit"]}x',
            'yes' if t['met'] else 'NO',
            '{:.1f}-{:.1f}'.format(*t['load_1min']) if t.get('load_1min') else '',
            t['note'],
          ]
          for t in targets
        ],
      )
    )
    lines += [
      '',
      '"load": the 1-minute load average when the section that measured the target',
      f'started and when it ended, on {info["cores"]} cores (other jobs share this machine).',
    ]
    lines.append('')
  for s in sections:
    if s.markdown:
      load = f'1-minute load average {s.load[0]:.2f} at the start, {s.load[1]:.2f} at the end.'
      lines += [f'## {s.title}', '', load if s.load else '', '', s.markdown, '']
  return '\n'.join(lines)


def main(args) -> None:
  cfg = Config(
    quick=args.quick,
    reps=args.reps or (5 if args.quick else 11),
    sections=[s for s in args.sections.split(',') if s],
  )
  unknown = [s for s in cfg.sections if s not in SECTIONS]
  if unknown:
    raise SystemExit(f'unknown sections {unknown}; choose from {", ".join(SECTIONS)}')
  info = B.machine_info()
  sections = []
  for name in cfg.sections:
    print(f'[bench] {name} ...', file=sys.stderr, flush=True)
    load_start = os.getloadavg()[0]
    section = SECTIONS[name](cfg)
    section.load = (load_start, os.getloadavg()[0])
    for t in section.targets:
      t['load_1min'] = [round(v, 2) for v in section.load]
    sections.append(section)
  info['load_average_end'] = [round(v, 2) for v in os.getloadavg()]
  report = _report(info, sections, cfg)
  out = Path(args.out) if args.out else REPO / 'results' / ('bench-quick' if cfg.quick else 'bench')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix('.md').write_text(report)
  payload = {
    'machine': info,
    'config': vars(args),
    'targets': [t for s in sections for t in s.targets],
    'records': [r for s in sections for r in s.records],
  }
  out.with_suffix('.json').write_text(json.dumps(payload, indent=1, default=str))
  print(report)
  print(f'[bench] wrote {out.with_suffix(".md")} and {out.with_suffix(".json")}', file=sys.stderr)


if __name__ == '__main__':
  main(_ARGS)
