"""The allocator XLA:CPU runs best with, set before anything heavy is imported.

glibc's malloc gives XLA:CPU fresh pages for each large buffer, and the page
faults slow large element-wise ops several times over;
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge pages for malloc)
avoids most of them. glibc reads the setting only when a process starts, so
when it is missing from ``GLIBC_TUNABLES`` the command line re-executes
itself once, before importing anything heavy, with it added (``os.execve``:
same process id, same arguments). ``LNORM_ALLOCATOR=default`` turns this off.
"""

import os
import sys

HUGETLB_TUNABLE = 'glibc.malloc.hugetlb=1'


def reexec_with_hugetlb() -> None:
  """Re-executes this process with ``glibc.malloc.hugetlb=1`` in ``GLIBC_TUNABLES`` if absent."""
  if os.environ.get('LNORM_ALLOCATOR', '') == 'default' or not sys.platform.startswith('linux'):
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return  # Set by the user or by an earlier exec of this command: never loops.
  env = dict(
    os.environ, GLIBC_TUNABLES=f'{tunables}:{HUGETLB_TUNABLE}' if tunables else HUGETLB_TUNABLE
  )
  argv = getattr(sys, 'orig_argv', None) or [sys.executable, *sys.argv]  # Keeps ``-m lnorm.main``.
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)
