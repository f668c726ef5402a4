"""``make demo``'s two commands, run as the Makefile writes them, at a tiny budget."""

import pathlib
import re
import shlex
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _demo_commands() -> list[list[str]]:
  """The ``demo`` recipe of the Makefile, one argv per command (continuation lines joined)."""
  text = (REPO_ROOT / 'Makefile').read_text().replace('\\\n', ' ')
  recipe = re.search(r'^demo:.*\n((?:\t.*\n)+)', text, re.M).group(1)
  return [shlex.split(line.strip()) for line in recipe.splitlines() if line.strip()]


def test_make_demo_runs_end_to_end_on_the_embedded_subset(tmp_path):
  commands = _demo_commands()
  assert [c[1] for c in commands] == ['scripts/sweep.py', 'scripts/compare.py']
  root = tmp_path / 'demo'
  for argv in commands:
    argv = [sys.executable if a == '$(PY)' else a for a in argv]
    # The same commands at a tiny budget: the smoke model, 1 epoch, batch 128 only.
    argv = [a.replace('epochs=5', 'epochs=1,smoke').replace('runs/demo', str(root)) for a in argv]
    if argv[1] == 'scripts/sweep.py':
      argv.append('--filter=batch_size-128')
    cmd = ' '.join(a if '*' in a else shlex.quote(a) for a in argv)  # The shell expands globs.
    out = subprocess.run(cmd, shell=True, cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
  runs = sorted(p.name for p in root.glob('norm-*'))
  assert runs == [f'norm-{n}_batch_size-128_seed-0_data-embedded_epochs-1_smoke-True'
                  for n in ('batch', 'layer', 'none')]  # fmt: skip
  assert (root / 'compare.png').stat().st_size > 10_000
  table = (root / 'compare.md').read_text()
  assert all(f'| {n} |' in table for n in ('none', 'batch', 'layer'))
