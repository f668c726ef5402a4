"""The splicing of generated markdown into the README."""

import pytest

from scripts.readme_results import main, splice

README = 'intro\n<!-- BEGIN generated: t -->\nold\n<!-- END generated: t -->\nrest\n'


def test_splice_replaces_only_the_named_block():
  out = splice(README, 't', '| a |\n|---|\n')
  assert (
    out == 'intro\n<!-- BEGIN generated: t -->\n| a |\n|---|\n<!-- END generated: t -->\nrest\n'
  )
  assert (
    splice(out, 't', 'x')
    == 'intro\n<!-- BEGIN generated: t -->\nx\n<!-- END generated: t -->\nrest\n'
  )


def test_missing_block_is_a_clear_error():
  with pytest.raises(ValueError, match="no block named 'u'"):
    splice(README, 'u', 'x')


def test_command_line(tmp_path):
  readme, table = tmp_path / 'README.md', tmp_path / 't.md'
  readme.write_text(README)
  table.write_text('new\n')
  assert main([f't={table}', '--readme', str(readme)]) == 0
  assert 'new\n<!-- END' in readme.read_text()
