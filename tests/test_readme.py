"""The README's code examples run as written."""

import re

from conftest import REPO_ROOT


def _python_blocks(section: str) -> list[str]:
  text = (REPO_ROOT / 'README.md').read_text()
  start = text.index(f'## {section}')
  end = text.find('\n## ', start + 1)
  return re.findall(r'```python\n(.*?)```', text[start : end if end > 0 else None], re.S)


def test_use_in_your_flax_project_examples_run():
  blocks = _python_blocks('Use in your Flax project')
  assert len(blocks) == 2
  for block in blocks:
    exec(compile(block, 'README.md', 'exec'), {})
