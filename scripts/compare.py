r"""Curves (PNG) and a markdown table of best and final values of run workdirs.

  python scripts/compare.py runs/pmnist/* --metrics test/nll,test/error --x epoch \
      --out results/pmnist

writes results/pmnist.png and results/pmnist.md; see :mod:`lnorm.compare` and ``--help``.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lnorm.compare import main  # noqa: E402 (after the path set-up)

if __name__ == '__main__':
  sys.exit(main())
