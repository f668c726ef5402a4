r"""Compares runs: curves of their metrics (PNG) and a markdown table of best and final values.

Each workdir holds ``config.json`` (the run's config), ``metrics.jsonl`` (one
JSON object per logged step, with ``step``, ``epoch``, ``examples``, ``wall_s``
and metric keys like ``train/loss``, ``test/error``; non-finite values are the
strings ``'nan'``, ``'inf'``) and, once finished, ``final.json``.

Runs are grouped by config fields: one colour per value of ``color_by``
(default ``norm``), one panel per metric and value of ``panel_by`` (default
``batch_size``). The runs of a group (the seeds) are aggregated: the curve is
their mean, the band their min-max range, at every x value any of them logged
(a run counts only inside its own x range; between its logged points it is
linearly interpolated). Fields are looked up in the flattened config by their
dotted name, or by a unique suffix (``norm`` finds ``model.norm``).

Command line (``scripts/compare.py`` is a thin wrapper)::

  python scripts/compare.py runs/pmnist/* --metrics test/nll,test/error --x epoch \
      --out results/pmnist

writes ``results/pmnist.png`` and ``results/pmnist.md`` and prints the table.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lnorm.lab import cli
from lnorm.lab.colors import norm_color
from lnorm.lab.metrics import read_metrics
from lnorm.lab.workdir import CONFIG_FILE, FINAL_FILE, METRICS_FILE, read_json

X_AXES = ('step', 'epoch', 'examples', 'wall_s')


@dataclasses.dataclass
class RunData:
  """One workdir: its flattened config, metric rows (sorted by step) and final.json (or None)."""

  path: pathlib.Path
  config: dict[str, Any]
  rows: list[dict[str, Any]]
  final: dict[str, Any] | None

  @property
  def name(self) -> str:
    return self.path.name

  def series(self, metric: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows holding ``metric``: <float64>[n] x values (increasing) and <float64>[n] values.

    Rows with the same x keep the last one; non-finite values are kept (NaN, inf).
    """
    points = {}
    for row in self.rows:
      if metric in row and x in row and row[metric] is not None:
        points[float(row[x])] = _to_float(row[metric])
    xs = np.array(sorted(points), dtype=np.float64)
    return xs, np.array([points[v] for v in xs], dtype=np.float64)

  @property
  def epochs(self) -> float:
    """The largest ``epoch`` of the logged rows (0 without rows)."""
    return max((float(r.get('epoch', 0)) for r in self.rows), default=0.0)

  @property
  def metrics(self) -> set[str]:
    """The metric keys of the logged rows (all keys but the x axes)."""
    return {k for r in self.rows for k in r if k not in X_AXES}


def _to_float(value: Any) -> float:
  return float(value)  # float('nan') / float('inf') also read the strings metrics.jsonl writes.


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``; lists become tuples (hashable group keys)."""
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(flatten(value, name + '.'))
    else:
      out[name] = tuple(value) if isinstance(value, list) else value
  return out


def load_run(workdir: str | pathlib.Path) -> RunData:
  """Reads one workdir.

  Raises:
    FileNotFoundError: no ``metrics.jsonl``.
    ValueError: ``metrics.jsonl`` has no rows.
  """
  path = pathlib.Path(workdir)
  metrics_path = path / METRICS_FILE
  if not metrics_path.is_file():
    raise FileNotFoundError(f'{path}: no {METRICS_FILE} (not a run, or not started).')
  rows = sorted(read_metrics(path), key=lambda r: r.get('step', 0))
  if not rows:
    raise ValueError(f'{path}: {METRICS_FILE} is empty.')
  config = read_json(path / CONFIG_FILE) or {}
  return RunData(path, flatten(config), rows, read_json(path / FINAL_FILE))


def load_runs(paths: Sequence[str | pathlib.Path], warn: Callable[[str], None] | None = None):
  """Reads the workdirs among ``paths``; other files and runs without metrics are skipped.

  Args:
    paths: workdirs (a shell glob such as ``runs/pmnist/*`` may add files: skipped).
    warn: called with a line for each path skipped (default: ``warnings.warn``).

  Returns:
    A list of :class:`RunData`, in the order of ``paths``.

  Raises:
    FileNotFoundError: a path does not exist.
    ValueError: no path holds a run with metrics.
  """
  warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
  runs = []
  for p in paths:
    p = pathlib.Path(p)
    if not p.exists():
      raise FileNotFoundError(f'{p} does not exist.')
    if not p.is_dir():
      warn(f'{p}: not a directory; skipped.')
      continue
    try:
      runs.append(load_run(p))
    except (FileNotFoundError, ValueError) as e:
      warn(f'{e} Skipped.')
  if not runs:
    raise ValueError(
      f'no runs with metrics among the {len(paths)} paths given '
      f'(a run is a directory with a non-empty {METRICS_FILE}).'
    )
  return runs


def field_value(run: RunData, field: str) -> Any:
  """The value of config ``field`` (dotted name or unique suffix); None when absent.

  Raises:
    ValueError: the suffix matches several fields.
  """
  if field in run.config:
    return run.config[field]
  matches = [k for k in run.config if k.endswith('.' + field)]
  if len(matches) > 1:
    raise ValueError(f'{run.path}: field {field!r} is ambiguous: {", ".join(sorted(matches))}.')
  return run.config[matches[0]] if matches else None


def _sort_key(value: Any) -> tuple:
  if isinstance(value, bool | int | float):
    return (0, float(value), '')
  return (1, 0.0, str(value))


def _tuple_key(values: tuple) -> tuple:
  return tuple(_sort_key(v) for v in values)


@dataclasses.dataclass
class Group:
  """The runs (seeds) that share the values of the colour and panel fields."""

  color: tuple
  panel: tuple
  runs: list[RunData]


def group_runs(
  runs: Sequence[RunData],
  color_by: Sequence[str] = ('norm',),
  panel_by: Sequence[str] = ('batch_size',),
  seed_field: str = 'seed',
  warn: Callable[[str], None] | None = None,
) -> list[Group]:
  """Groups runs by (panel values, colour values), sorted by those values.

  ``warn`` (default ``warnings.warn``) is told when the runs of a group differ
  in config fields other than ``seed_field`` (they are aggregated all the same).
  """
  warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
  groups: dict[tuple, Group] = {}
  for run in runs:
    color = tuple(field_value(run, f) for f in color_by)
    panel = tuple(field_value(run, f) for f in panel_by)
    groups.setdefault((panel, color), Group(color, panel, [])).runs.append(run)
  out = sorted(groups.values(), key=lambda g: (_tuple_key(g.panel), _tuple_key(g.color)))
  for g in out:
    seed_keys = {k for k in g.runs[0].config if k == seed_field or k.endswith('.' + seed_field)}
    keys = set().union(*(r.config for r in g.runs)) - seed_keys
    differ = sorted(k for k in keys if len({repr(r.config.get(k)) for r in g.runs}) > 1)
    if differ:
      warn(
        f'{label(color_by, g.color, panel_by, g.panel)}: its runs differ in {", ".join(differ)}.'
      )
  return out


def label(color_by: Sequence[str], color: tuple, panel_by=(), panel=()) -> str:
  """``'norm=layer, batch_size=4'`` for the given fields and values."""
  return ', '.join(
    f'{f}={v}' for f, v in zip((*color_by, *panel_by), (*color, *panel), strict=True)
  )


def aggregate(
  runs: Sequence[RunData], metric: str, x: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Mean, min and max of ``metric`` over runs at every x value any run logged.

  Each run is linearly interpolated between its own logged points and counts
  only inside its own x range; NaN values propagate into the mean.

  Returns:
    ``(xs, mean, lo, hi, count)``: <float64>[n] each, ``count`` the number of
    runs that cover each x. Empty arrays when no run logged ``metric``.
  """
  series = [r.series(metric, x) for r in runs]
  series = [(xs, ys) for xs, ys in series if len(xs)]
  if not series:
    empty = np.zeros(0)
    return empty, empty, empty, empty, empty
  grid = np.unique(np.concatenate([xs for xs, _ in series]))
  values = np.full((len(series), len(grid)), np.nan)
  covered = np.zeros((len(series), len(grid)), dtype=bool)
  for i, (xs, ys) in enumerate(series):
    inside = (grid >= xs[0]) & (grid <= xs[-1])
    covered[i] = inside
    exact = np.isin(grid, xs)
    values[i, exact] = ys[np.searchsorted(xs, grid[exact])]
    between = inside & ~exact
    values[i, between] = np.interp(grid[between], xs, ys)
  count = covered.sum(0)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)
    masked = np.where(covered, values, 0.0)
    mean = masked.sum(0) / count
    lo = np.where(covered, values, np.inf).min(0)
    hi = np.where(covered, values, -np.inf).max(0)
  return grid, mean, lo, hi, count.astype(np.float64)


@dataclasses.dataclass
class Stat:
  """Mean, sample standard deviation (ddof=1; 0 for one value), min and max of per-run values."""

  mean: float
  std: float
  min: float
  max: float
  n: int

  @classmethod
  def of(cls, values: Sequence[float]) -> Stat:
    v = np.asarray(values, dtype=np.float64)
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return cls(float(np.mean(v)), std, float(np.min(v)), float(np.max(v)), len(v))

  def format(self, digits: int = 4) -> str:
    """``'m ± s (lo–hi)'``: ``digits`` significant digits (2 for s); ``'m'`` for one value."""
    f = lambda v: f'{v:.{digits}g}'
    if self.n == 1:
      return f(self.mean)
    return f'{f(self.mean)} ± {self.std:.2g} ({f(self.min)}–{f(self.max)})'


@dataclasses.dataclass
class Summary:
  """The table row of one group: per metric the best and final values over its runs."""

  group: Group
  best: dict[str, Stat]
  final: dict[str, Stat]
  seeds: int
  epochs: Stat
  finished: int
  diverged: int


def higher_is_better(metric: str, maximize: Sequence[str] | None = None) -> bool:
  """True for metrics in ``maximize`` (default: names with 'acc' in their last part)."""
  if maximize is not None:
    return metric in maximize
  return 'acc' in metric.split('/')[-1]


def summarize(
  groups: Sequence[Group], metrics: Sequence[str], maximize: Sequence[str] | None = None
) -> list[Summary]:
  """Per group and metric: the best (lowest, or highest for :func:`higher_is_better`) and
  the final (last logged) value of each run, aggregated over the group's runs.

  A run without a value of a metric does not count for it; NaN values are
  ignored for the best and kept for the final.
  """
  out = []
  for g in groups:
    best, final = {}, {}
    for m in metrics:
      per_run = [r.series(m, 'step')[1] for r in g.runs]
      per_run = [ys for ys in per_run if len(ys)]
      if not per_run:
        continue
      pick = np.nanmax if higher_is_better(m, maximize) else np.nanmin
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # All-NaN runs give NaN.
        best[m] = Stat.of([pick(ys) for ys in per_run])
      final[m] = Stat.of([ys[-1] for ys in per_run])
    out.append(
      Summary(
        group=g,
        best=best,
        final=final,
        seeds=len(g.runs),
        epochs=Stat.of([r.epochs for r in g.runs]),
        finished=sum(r.final is not None for r in g.runs),
        diverged=sum(bool(r.final and r.final.get('diverged')) for r in g.runs),
      )
    )
  return out


def markdown_table(
  summaries: Sequence[Summary],
  metrics: Sequence[str],
  color_by: Sequence[str],
  panel_by: Sequence[str],
  digits: int = 4,
) -> str:
  """A markdown table, one row per group: fields, seeds, epochs, finished, best and final."""
  head = [*panel_by, *color_by, 'seeds', 'epochs', 'finished']
  for m in metrics:
    head += [f'{m} best', f'{m} final']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for s in summaries:
    e = s.epochs
    epochs = f'{e.min:.3g}' if e.min == e.max else f'{e.min:.3g}–{e.max:.3g}'
    finished = f'{s.finished}/{s.seeds}' + (f' ({s.diverged} diverged)' if s.diverged else '')
    cells = [str(v) for v in (*s.group.panel, *s.group.color)] + [str(s.seeds), epochs, finished]
    for m in metrics:
      cells += [s.best[m].format(digits) if m in s.best else '–']
      cells += [s.final[m].format(digits) if m in s.final else '–']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


#: Logged keys left out of the default metrics (by their last part): not results.
NOT_RESULTS = ('lr', 'grad_norm')


def available_metrics(runs: Sequence[RunData], results_only: bool = False) -> list[str]:
  """Every metric key any run logged, sorted; ``results_only`` drops :data:`NOT_RESULTS`."""
  keys = sorted(set().union(*(r.metrics for r in runs)))
  if results_only:
    keys = [k for k in keys if k.split('/')[-1] not in NOT_RESULTS]
  return keys


def check_metrics(runs: Sequence[RunData], metrics: Sequence[str]) -> None:
  """Raises ValueError naming the metrics no run logged, and listing those there are."""
  have = available_metrics(runs)
  missing = [m for m in metrics if m not in have]
  if missing:
    raise ValueError(
      f'no run logged {", ".join(missing)}; the runs have: {", ".join(have) or "(none)"}.'
    )


def plot(
  groups: Sequence[Group],
  metrics: Sequence[str],
  x: str,
  out_path: str | pathlib.Path,
  color_by: Sequence[str] = ('norm',),
  panel_by: Sequence[str] = ('batch_size',),
  logy: bool = False,
  title: str | None = None,
  grid_columns: int = 0,
) -> pathlib.Path:
  """Draws one panel per (metric, panel value): per colour the mean over seeds and its range.

  One row per metric and one column per panel value; with a single panel value and
  ``grid_columns > 0`` the metrics fill a grid of that many columns instead of one tall
  column. Writes a PNG (matplotlib's Agg canvas; no pyplot, no global state) and returns
  its path.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if x not in X_AXES:
    raise ValueError(f'x must be one of {", ".join(X_AXES)}; got {x!r}.')
  panels = sorted({g.panel for g in groups}, key=_tuple_key)
  colors = sorted({g.color for g in groups}, key=_tuple_key)
  if tuple(color_by) == ('norm',):  # Each norm keeps its colour across all figures.
    palette = {c: norm_color(str(c[0]), i) for i, c in enumerate(colors)}
  else:
    palette = {c: f'C{i % 10}' for i, c in enumerate(colors)}
  wrap = grid_columns > 0 and len(panels) == 1
  if wrap:
    ncols = min(grid_columns, len(metrics))
    nrows = -(-len(metrics) // ncols)
  else:
    nrows, ncols = len(metrics), len(panels)
  fig = Figure(figsize=(4.5 * ncols, 3.3 * nrows), layout='constrained')
  FigureCanvasAgg(fig)
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for ax in axes.flat[len(metrics) :] if wrap else ():
    ax.set_visible(False)  # The grid's last row may be short.
  for i, metric in enumerate(metrics):
    for j, panel in enumerate(panels):
      ax = axes.flat[i] if wrap else axes[i, j]
      for g in groups:
        if g.panel != panel:
          continue
        xs, mean, lo, hi, count = aggregate(g.runs, metric, x)
        if not len(xs):
          continue
        n = len(g.runs)
        name = label(color_by, g.color) if g.color else 'runs'
        ax.plot(xs, mean, color=palette[g.color], lw=1.5, label=f'{name} ({n} seed{"s" * (n > 1)})')
        if count.max() > 1:
          ax.fill_between(xs, lo, hi, color=palette[g.color], alpha=0.2, lw=0)
      panel_name = label(panel_by, panel)
      ax.set_title(f'{metric}' + (f' | {panel_name}' if panel_name else ''), fontsize=10)
      ax.set_xlabel(x)
      ax.set_ylabel(metric)
      if logy:
        ax.set_yscale('log')
      ax.grid(alpha=0.3)
      if ax.lines:
        ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out_path, dpi=110)
  return out_path


def _split(text: str | None) -> list[str]:
  return [t for t in (text or '').split(',') if t]


def main(argv: Sequence[str] | None = None) -> int:
  """The command line: see the module docstring and ``--help``."""
  parser = cli.ArgumentParser(
    description='Curves (PNG) and a table of best/final values (markdown) of run workdirs.'
  )
  parser.add_argument('workdirs', nargs='+', help='run directories (files are skipped).')
  parser.add_argument(
    '--metrics', default=None, help='comma-separated (default: all logged but lr, grad_norm).'
  )
  parser.add_argument('--x', default='epoch', choices=X_AXES, help='x axis (default epoch).')
  parser.add_argument('--color', default='norm', help='fields giving the colour (default norm).')
  parser.add_argument('--panel', default='batch_size', help='fields giving the panel column.')
  parser.add_argument('--seed_field', default='seed', help='field aggregated over (default seed).')
  parser.add_argument('--out', default='compare', help='writes OUT.png and OUT.md.')
  parser.add_argument('--logy', action='store_true', help='log-scale y axes.')
  parser.add_argument(
    '--maximize', default=None, help="metrics where higher is better (default: '*acc*')."
  )
  parser.add_argument('--title', default=None, help='figure title.')
  parser.add_argument('--digits', type=int, default=4, help='significant digits in the table.')
  args = parser.parse_args(argv)

  warn = lambda msg: print(f'warning: {msg}', file=sys.stderr)
  try:
    runs = load_runs(args.workdirs, warn=warn)
    metrics = _split(args.metrics) or available_metrics(runs, results_only=True)
    check_metrics(runs, metrics)
  except (OSError, ValueError) as e:  # Missing or empty run directories, unknown metrics.
    parser.exit(2, f'compare.py: error: {e}\n')
  color_by, panel_by = _split(args.color), _split(args.panel)
  groups = group_runs(runs, color_by, panel_by, args.seed_field, warn=warn)
  maximize = _split(args.maximize) if args.maximize is not None else None
  summaries = summarize(groups, metrics, maximize)
  table = markdown_table(summaries, metrics, color_by, panel_by, args.digits)
  note = (
    f'{len(runs)} runs. Cells: mean ± sample std (min–max) over seeds. best: the lowest value '
    'logged (highest for accuracies); final: the last value logged; epochs: epochs reached; '
    'finished: runs with final.json.\n\n'
  )
  png, md = pathlib.Path(args.out + '.png'), pathlib.Path(args.out + '.md')
  plot(groups, metrics, args.x, png, color_by, panel_by, args.logy, args.title)
  md.write_text(note + table)
  print(note + table, end='')
  print(f'wrote {png} and {md}')
  return 0
