r"""Splices generated markdown (comparison tables, benchmark reports) into README.md.

The README's result and performance sections are never typed by hand: each
sits between two markers,

  <!-- BEGIN generated: NAME -->
  ...
  <!-- END generated: NAME -->

and this script replaces what is between them with the contents of a file
that a tool wrote (``scripts/compare.py --out results/pmnist`` writes
``results/pmnist.md``; ``scripts/bench.py`` writes ``results/bench.md``).

  python scripts/readme_results.py pmnist=results/pmnist.md bench=results/bench.md
"""

from __future__ import annotations

import pathlib
import re
import sys

from lnorm.lab import cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def splice(readme: str, name: str, body: str) -> str:
  """Returns ``readme`` with the block named ``name`` replaced by ``body``."""
  tag = re.escape(name)
  pattern = re.compile(
    rf'(<!-- BEGIN generated: {tag} -->\n)(.*?)(<!-- END generated: {tag} -->)', re.S
  )
  if not pattern.search(readme):
    raise ValueError(
      f'README has no block named {name!r}: add the lines '
      f'"<!-- BEGIN generated: {name} -->" and "<!-- END generated: {name} -->".'
    )
  return pattern.sub(lambda m: m.group(1) + body.rstrip('\n') + '\n' + m.group(3), readme)


def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('blocks', nargs='+', help='NAME=FILE pairs.')
  parser.add_argument('--readme', default=str(REPO_ROOT / 'README.md'))
  args = parser.parse_args(argv)
  path = pathlib.Path(args.readme)
  text = path.read_text()
  for block in args.blocks:
    name, sep, file = block.partition('=')
    if not sep:
      parser.error(f'expected NAME=FILE, got {block!r}')
    text = splice(text, name, pathlib.Path(file).read_text())
  path.write_text(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
