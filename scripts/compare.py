r"""Curves (PNG) and a markdown table of best and final values of run workdirs.

  python scripts/compare.py runs/pmnist/* --metrics test/nll,test/error --x epoch \
      --out results/pmnist

writes results/pmnist.png and results/pmnist.md; see :mod:`lnorm.lab.compare` and ``--help``.
"""

import sys

from lnorm.lab.compare import main

if __name__ == '__main__':
  sys.exit(main())
