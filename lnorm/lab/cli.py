"""Command-line helpers shared by the scripts: every mistake is one line and exit 2."""

from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose errors are one line on stderr (no usage block), exit 2."""

  def error(self, message: str):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def fail(prog: str, message: str, code: int = 2):
  """Writes ``prog: error: message`` on stderr and exits with ``code``."""
  sys.stderr.write(f'{prog}: error: {message}\n')
  sys.exit(code)
