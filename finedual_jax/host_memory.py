"""Transparent huge pages for XLA's host buffers on Linux: far fewer page faults on CPU.

XLA:CPU allocates an executable's temporary buffers afresh on every call, as large blocks that
glibc maps from the kernel and returns after the call. With 4 KiB pages the next call faults
every page in again: about 260,000 minor page faults (1 GB) per transformer block's forward
and backward pass at the ``bench`` size, measured as 10-20% of a training step on a 2-core
CPU. glibc (2.35 and later) can ask the kernel for transparent huge pages (2 MiB) for those
blocks, ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``; it reads the setting only when a process
starts, so the command-line entry points call ``reexec_with_huge_pages`` first, which starts the
same command again, once, with the tunable added.

Nothing happens off Linux, without glibc 2.35+, where the kernel's transparent huge pages are
off ('never'), where ``GLIBC_TUNABLES`` already names the setting (the re-executed process
itself, or a user's own choice), or with ``FINEDUAL_HUGE_PAGES=0``.

Huge pages make the faults fewer, not free: the kernel still zeroes, and with its ``defrag``
mode at ``madvise`` compacts memory for, every 2 MiB page of the new mapping. The FineDual
``bench`` step (a 9.1 GB temporary block) spent 4-8 s of system time per 13.5-17.5 s step in
4,900-7,500 faults on a 2-core AMD EPYC (Zen 4). ``FINEDUAL_KEEP_HOST_MEMORY=1`` also keeps
freed blocks inside the process for the next call (``KEEP_FREED``: every thread on glibc's
main heap, no ``mmap`` for large blocks, no trimming): there the same step ran in 11.4-11.8 s
with no faults and the same losses. It is opt-in because freed memory is no longer given
back: one ``bench`` benchmark run peaked at 19.2 GiB of host memory against 10.5-11.1 GiB
without it, with one step that faulted a second block in (probably a block freed while the
next call's was live, or one cut up by a small allocation between calls; not traced).
"""

from __future__ import annotations

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb'
OPT_OUT = 'FINEDUAL_HUGE_PAGES'
KEEP_OPT_IN = 'FINEDUAL_KEEP_HOST_MEMORY'
# Freed blocks stay in the process: one heap for all threads (another thread's arena would map
# a large block anyway), never mapped separately, never trimmed (below 1 TiB free at the top).
KEEP_FREED = {'glibc.malloc.arena_max': '1', 'glibc.malloc.mmap_max': '0',
              'glibc.malloc.trim_threshold': str(1 << 40)}
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def tunables_with_huge_pages(current: str | None, keep_freed: bool = False) -> str | None:
  """``GLIBC_TUNABLES`` with huge pages for malloc (and, with ``keep_freed``, ``KEEP_FREED``)
  added, or None when ``current`` already names each of them (to any value: a user's choice is
  kept)."""
  wanted = {TUNABLE: '1', **(KEEP_FREED if keep_freed else {})}
  named = _named(current)
  missing = [f'{name}={value}' for name, value in wanted.items() if name not in named]
  return ':'.join([e for e in (current or '').split(':') if e] + missing) if missing else None


def _named(tunables: str | None) -> dict[str, str]:
  """``GLIBC_TUNABLES``' entries as {name: value} (the last one where a name repeats)."""
  return dict(entry.partition('=')[::2] for entry in (tunables or '').split(':') if entry)


def glibc_version() -> tuple[int, ...] | None:
  """(major, minor) of the C library when it is glibc, else None."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (AttributeError, ValueError, OSError):
    return None
  if name != 'glibc':
    return None
  try:
    return tuple(int(part) for part in version.split('.')[:2])
  except ValueError:
    return None


def transparent_huge_pages() -> str | None:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'), None if unknown."""
  try:
    with open(_THP_MODE) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def describe() -> dict[str, str | None]:
  """What this process runs with, for benchmark reports."""
  tunables = os.environ.get('GLIBC_TUNABLES')
  named = _named(tunables)
  return {'glibc_tunables': tunables, 'huge_pages': named.get(TUNABLE) in ('1', '2'),
          'keeps_freed_memory': all(named.get(k) == v for k, v in KEEP_FREED.items()),
          'transparent_huge_pages': transparent_huge_pages()}


def tunables_for_this_machine() -> str | None:
  """The ``GLIBC_TUNABLES`` value a process here should start with, None where it already has
  it or nothing would change (see the module docstring)."""
  if os.environ.get(OPT_OUT, '1') == '0' or not sys.platform.startswith('linux'):
    return None
  version = glibc_version()
  if version is None or version < (2, 35) or transparent_huge_pages() in (None, 'never'):
    return None
  keep = os.environ.get(KEEP_OPT_IN, '0')
  if keep not in ('0', '1'):
    raise ValueError(f'{KEEP_OPT_IN}: expected 1 (keep freed host memory for the next call) or '
                     f'0 (give it back, the default), found {keep!r}.')
  keep = keep == '1'
  return tunables_with_huge_pages(os.environ.get('GLIBC_TUNABLES'), keep_freed=keep)


def reexec_with_huge_pages() -> None:
  """Starts this command again with ``glibc.malloc.hugetlb=1`` where that helps (see the module
  docstring); returns without doing anything otherwise. Call it before any work is done."""
  tunables = tunables_for_this_machine()
  if tunables is None:
    return
  argv = getattr(sys, 'orig_argv', None)
  if not argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]],
            {**os.environ, 'GLIBC_TUNABLES': tunables})
