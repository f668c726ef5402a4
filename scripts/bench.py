"""lnorm's benchmark: ratios against Flax and against the memory-traffic floor, in one process.

Run book::

    python scripts/bench.py            # full run, ~5-10 min on 2 cores: results/bench.{md,json}
    python scripts/bench.py --quick    # ~1-2 min, smaller shapes: results/bench-quick.{md,json}
    python scripts/bench.py --sections=layer_norm --reps=21

Every number that matters is a ratio of medians of interleaved runs measured
in the same process after compilation (see :mod:`lnorm.benchmarking`); the
report's header gives the machine, the load average and the library versions.

Sections (``--sections``, comma-separated; add one by writing a function
``section_<name>(cfg) -> Section`` and listing it in ``SECTIONS``):

* ``layer_norm``: ``lnorm.layer_norm`` forward and forward+backward (output
  and gradients for x, scale and bias) against ``flax.linen.LayerNorm``
  (epsilon matched), autodiff of our own formula, and element-wise ops that
  move the same bytes; achieved GB/s, compile time, XLA's memory analysis and
  the bytes reverse mode keeps for the backward pass.
* ``rnn``: LN-LSTM / LN-GRU (``lnorm.recurrent``) and their ``norm='none'``
  twins against Flax's ``OptimizedLSTMCell`` / ``GRUCell`` in ``nn.RNN``,
  forward and forward+backward; plus LN-LSTM with the input projection and
  its layer norm hoisted out of the time loop.
* ``allocator``: the same two layer-norm timings in two child processes, with
  and without ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``.

The allocator: glibc's malloc hands XLA:CPU fresh pages for every large
buffer, and the page faults dominate large element-wise ops. Huge pages
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``) avoid most of them. The setting
must be in the environment when the process starts, so this script re-executes
itself with it unless ``--allocator=default`` (the Makefile exports it too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HUGETLB = 'glibc.malloc.hugetlb=1'
REPO = Path(__file__).resolve().parents[1]


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true', help='smaller shapes and fewer repetitions')
  p.add_argument('--sections', default='layer_norm,rnn,allocator')
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
  os.execve(sys.executable, [sys.executable, *sys.argv], env)


if __name__ == '__main__':
  _ARGS = _parse_args()
  _reexec_for_allocator(_ARGS)

# Imported after the re-exec so that the allocator setting applies to them.
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lnorm import benchmarking as B  # noqa: E402
from lnorm import functional as F  # noqa: E402


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


def _target(name: str, value: float, limit: float, note: str = '') -> dict[str, Any]:
  return {
    'target': name,
    'value': round(value, 3),
    'limit': limit,
    'met': value <= limit,
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


def _layer_norm_fns(dtype):
  """name -> (kind, function of (x, s, b) or (x, s, b, dy)) for one input dtype."""
  f32 = jnp.float32
  ours = lambda x, s, b: F.layer_norm(x, s, b)  # noqa: E731
  reference = lambda x, s, b: F.layer_norm_reference(x, s, b)  # noqa: E731
  flax_ln = _flax_layer_norm(dtype)
  return {
    'fwd ours': ('fwd', ours),
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


def _bytes_moved(name: str, n: int, itemsize: int) -> int:
  if name.startswith('fwd+bwd'):
    return (3 if '(x,dy->dx)' in name else 4) * n * itemsize
  return 2 * n * itemsize


def section_layer_norm(cfg: Config) -> Section:
  shapes = [(4096, 512), (16384, 1024)] if cfg.quick else [(4096, 512), (65536, 1024)]
  dtypes = [jnp.float32, jnp.bfloat16]
  header = [
    'shape',
    'dtype',
    'function',
    'median ms',
    'CPU ms',
    'vs flax',
    'vs same-bytes op',
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
      for name, fn in (('ours', fns['fwd ours'][1]), ('flax', fns['fwd flax'][1])):
        residuals[f'fwd+bwd {name}'] = B.residual_bytes(fn, x, s, b)
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
        rows.append(
          [
            f'{shape[0]}x{shape[1]}',
            jnp.dtype(dtype).name,
            c.name,
            B.fmt_ms(t.median),
            B.fmt_ms(t.cpu_median),
            B.ratio(t.median, flax_ref),
            B.ratio(t.median, ew_ref),
            f'{gbs:.1f}',
            f'{c.compile_s:.2f}',
            B.fmt_bytes(c.memory.get('temp', 0)),
            B.fmt_bytes(c.memory.get('peak', 0)),
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
            'gb_per_s': gbs,
            'compile_s': c.compile_s,
            'memory': c.memory,
            'residual_bytes': residuals.get(c.name),
          }
        )
      if dtype == jnp.float32:
        tag = f'{shape[0]}x{shape[1]} float32'
        targets += [
          _target(
            f'LN fwd+bwd / flax fwd+bwd, {tag}',
            med['fwd+bwd ours'] / med['fwd+bwd flax'],
            0.6,
          ),
          _target(
            f'LN fwd+bwd / same-bytes op (x,dy->y,dx), {tag}',
            med['fwd+bwd ours'] / med['fwd+bwd same-bytes op (x,dy->y,dx)'],
            1.5,
            f'vs (x,dy->dx): {med["fwd+bwd ours"] / med["fwd+bwd same-bytes op (x,dy->dx)"]:.2f}x',
          ),
          _target(f'LN fwd / flax fwd, {tag}', med['fwd ours'] / med['fwd flax'], 1.0),
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
      'pullback, the input x included).',
      '',
      B.markdown_table(header, rows),
    ]
  )
  return Section('Layer norm', md, records, targets)


# ----------------------------------------------------------------------------
# Recurrent cells


def _lstm_hoisted(hidden: int):
  """LN-LSTM (``lnorm.recurrent.LSTMCell(norm='layer')`` parameters) with ``LN(W_x x_t) + b``
  computed for all time steps in one matmul and one layer norm before the time loop."""

  def apply(variables, x):  # x: [batch, time, in]
    p = variables['params']['cell']
    wx = F.layer_norm(x @ p['input_kernel'], p['ln_x']['scale'], p['ln_x']['bias']) + p['bias']

    def step(carry, wx_t):
      c, h = carry
      wh = F.layer_norm(h @ p['recurrent_kernel'], p['ln_h']['scale'], p['ln_h']['bias'])
      f, i, o, g = jnp.split(wh + wx_t, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(F.layer_norm(c, p['ln_c']['scale'], p['ln_c']['bias']))
      return (c, h), h

    zeros = jnp.zeros((x.shape[0], hidden), x.dtype)
    _, hs = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(wx, 0, 1))
    return jnp.swapaxes(hs, 0, 1)

  return apply


def section_rnn(cfg: Config) -> Section:
  from lnorm import recurrent as R

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
    }
    applies, params = {}, {}
    for name, (_, module) in models.items():
      params[name] = module.init(jax.random.key(2), x)
      applies[name] = module.apply
    name_hoist = "ours LSTM norm='layer', input projection hoisted"
    models[name_hoist] = ('lstm', None)
    params[name_hoist] = params["ours LSTM norm='layer'"]
    applies[name_hoist] = _lstm_hoisted(hidden)
    # Rounding differences grow along the sequence; the first steps must agree closely.
    check = jnp.abs(
      applies[name_hoist](params[name_hoist], x[:, :10])
      - applies["ours LSTM norm='layer'"](params[name_hoist], x[:, :10])
    ).max()
    assert float(check) < 1e-4, f'hoisted LN-LSTM differs from the cell by {float(check)}'

    compiled = []
    for name, apply in applies.items():
      compiled.append(B.compile_fn(f'{name} | fwd', apply, params[name], x))

      def fwdbwd(p, x, dy, apply=apply):
        y, pullback = jax.vjp(apply, p, x)
        return y, *pullback(dy)

      compiled.append(B.compile_fn(f'{name} | fwd+bwd', fwdbwd, params[name], x, dy))
    timings = B.time_interleaved(compiled, reps=cfg.reps, min_seconds=0 if cfg.quick else 3)
    by = {c.name: c for c in compiled}
    med = {k: t.median for k, t in timings.items()}
    for name, (kind, _) in models.items():
      flax_name = 'flax OptimizedLSTMCell' if kind == 'lstm' else 'flax GRUCell'
      f, fb = med[f'{name} | fwd'], med[f'{name} | fwd+bwd']
      ff, ffb = med[f'{flax_name} | fwd'], med[f'{flax_name} | fwd+bwd']
      c = by[f'{name} | fwd+bwd']
      rows.append(
        [
          f'{batch}, {steps}, {n_in}, {hidden}',
          name,
          B.fmt_ms(f),
          B.ratio(f, ff),
          B.fmt_ms(fb),
          B.ratio(fb, ffb),
          B.fmt_ms(timings[f'{name} | fwd+bwd'].cpu_median),
          f'{c.compile_s:.2f}',
          B.fmt_bytes(c.memory.get('temp', 0)),
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
          'compile_s': c.compile_s,
          'memory': c.memory,
        }
      )
    targets.append(
      _target(
        f'LN-LSTM fwd+bwd / flax OptimizedLSTMCell fwd+bwd, {batch}x{steps}x{n_in}x{hidden}',
        med["ours LSTM norm='layer' | fwd+bwd"] / med['flax OptimizedLSTMCell | fwd+bwd'],
        1.10,
        f'hoisted: {med[name_hoist + " | fwd+bwd"] / med["flax OptimizedLSTMCell | fwd+bwd"]:.2f}x',
      )
    )
  md = '\n'.join(
    [
      'Each model is `nn.RNN(cell)` over `x: [batch, T, in]` (float32), forward and',
      'forward+backward (`jax.vjp` for the parameters and x with a given cotangent)',
      "in one jitted function. Ratios are against Flax's cell of the same kind",
      '(no normalization). The hoisted LN-LSTM is the same model written with',
      '`LN(W_x x_t) + b` for all steps computed before the `lax.scan` (checked equal',
      'to the cell to 1e-4 over the first 10 steps).',
      '',
      B.markdown_table(header, rows),
    ]
  )
  return Section('Recurrent cells', md, records, targets)


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
      cmd = [sys.executable, __file__, '--sections=alloc_probe', f'--allocator={setting}']
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


SECTIONS = {
  'layer_norm': section_layer_norm,
  'rnn': section_rnn,
  'allocator': section_allocator,
  'alloc_probe': section_alloc_probe,
}


# ----------------------------------------------------------------------------


def _report(info, sections: list[Section], cfg: Config) -> str:
  targets = [t for s in sections for t in s.targets]
  lines = [
    f'# lnorm benchmark{" (quick)" if cfg.quick else ""}',
    '',
    f'`python scripts/bench.py{" --quick" if cfg.quick else ""}` on {info["date"]}.',
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
        ['target', 'measured', 'limit', 'met', 'note'],
        [
          [
            t['target'],
            f'{t["value"]:.2f}x',
            f'{t["limit"]}x',
            'yes' if t['met'] else 'NO',
            t['note'],
          ]
          for t in targets
        ],
      )
    )
    lines.append('')
  for s in sections:
    if s.markdown:
      lines += [f'## {s.title}', '', s.markdown, '']
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
    sections.append(SECTIONS[name](cfg))
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
