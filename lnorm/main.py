r"""The command line of every experiment (the logic is in :mod:`lnorm.lab.main`).

From the repository root::

  python -m lnorm.main --config=configs/pmnist.py:norm=layer,batch_size=4 \
      --workdir=runs/pmnist/layer-bs4 --config.num_epochs=5
"""

if __name__ == '__main__':
  from lnorm.lab import allocator

  allocator.reexec_with_hugetlb()  # First: glibc reads its tunables only at start-up.

  from lnorm.lab import main

  main.run()
