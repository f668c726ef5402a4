"""scripts/bench.py end to end, at its smallest: the report and the allocator's child processes."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_allocator_section_runs_its_probes_and_writes_the_report(tmp_path):
  # The allocator section re-runs the script in two child processes (default malloc and
  # huge pages); they must import what the parent imports (a full run once failed there).
  out = tmp_path / 'bench'
  cmd = [sys.executable, '-m', 'scripts.bench', '--quick', '--sections=allocator', '--reps=1']
  subprocess.run([*cmd, '--out', str(out)], cwd=REPO, check=True, capture_output=True)
  report = json.loads(out.with_suffix('.json').read_text())
  records = [r for r in report['records'] if r['section'] == 'allocator']
  assert len(records) == 2  # The two timed functions, each under both allocators.
  assert all(r['default']['median_s'] > 0 and r['hugetlb']['median_s'] > 0 for r in records)
  assert '## Allocator' in out.with_suffix('.md').read_text()


def test_unknown_section_is_a_clear_error():
  cmd = [sys.executable, '-m', 'scripts.bench', '--sections=layer_norm,grup']
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert done.returncode != 0
  assert "unknown sections ['grup']" in done.stderr and 'order_embeddings' in done.stderr
