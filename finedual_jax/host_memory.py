"""How XLA's host buffers are allocated on Linux: the command lines start themselves again, once,
with an allocator that serves each call's large temporary block without page faults.

XLA:CPU allocates an executable's temporary buffers afresh on every call, as one large block
(9.1 GB for the FineDual ``bench`` training step) that it frees after the call. glibc maps such
a block from the kernel and unmaps it when it is freed, so the next call faults every page in
again, and the kernel zeroes each one. On a 2-core AMD EPYC (Zen 4) that was 4-8 s of system
time in each 13.5-17.5 s FineDual ``bench`` step.

**jemalloc, where it is installed** (Debian: ``apt install libjemalloc2``; found through the
loader's cache, or named by ``FINEDUAL_JEMALLOC=/path/libjemalloc.so.2``) is preloaded with
``MALLOC_CONF=oversize_threshold:0,background_thread:true`` (``JEMALLOC_CONF``). By default
jemalloc gives blocks above 8 MiB an arena of their own that returns them to the kernel at once
(measured: 2.36 million faults per step); with the threshold at 0 they go through its ordinary
arenas, which keep freed pages for the next allocation and give them back after 10 s unused.
Without background threads an arena gives pages back only when a thread allocates from it
again, so memory freed by threads that had finished stayed: a FineDual ``bench`` benchmark run
peaked at 19,354 MiB of host memory, against 13,264 MiB with them (glibc, another day: 11,323
MiB). Measured on a 2-core AMD EPYC (Zen 4): the step took 12.1-12.9 s with 0.00-0.08 s of
system time (threshold 0, a 60 s decay) and the same losses as with glibc (15.5-16.5 s with
huge pages, the same day); the benchmark's FineDual step 12.4 s; the sampler's speed did not
change. ``FINEDUAL_JEMALLOC=0`` turns this off; a ``MALLOC_CONF`` of the user's own is
kept. jemalloc 5.3.0 (Debian 12's) creates arena 0 before it reads its options, so that arena
alone keeps the default threshold (8 MiB) and gives each large block back at once: a run whose
executing thread drew arena 0 faulted every page of every call (2 of 27 runs of a test here
with the default arenas, every run with ``narenas:1``). Where the threshold is 0, the
re-executed process lifts arena 0's too (``jemalloc_arena_zero_keeps_large_blocks``).

**Otherwise glibc** (2.35 and later) is asked for transparent huge pages (2 MiB) for those
blocks, ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``: far fewer faults, but the kernel still
zeroes, and with its ``defrag`` mode at ``madvise`` compacts memory for, every 2 MiB page of
each new mapping. ``FINEDUAL_KEEP_HOST_MEMORY=1`` also keeps freed blocks inside the process
for the next call (``KEEP_FREED``: every thread on glibc's main heap, no ``mmap`` for large
blocks, no trimming): there the step ran in 11.4-11.8 s with no faults and the same losses. It
is opt-in because nothing then bounds what is kept: one ``bench`` benchmark run peaked at 19.2
GiB of host memory against 10.5-11.1 GiB without it, with one step that faulted a second block
in (probably taken while the previous call's was not yet freed; not traced).
Nothing is added off Linux, without glibc 2.35+, where the kernel's transparent huge pages are
off ('never'), where ``GLIBC_TUNABLES`` already names the settings (the re-executed process
itself, or a user's own choice), or with ``FINEDUAL_HUGE_PAGES=0``.

Both settings are read only when a process starts, so the entry points call
``reexec_for_host_memory`` first, which starts the same command again with them.
"""

from __future__ import annotations

import ctypes.util
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
JEMALLOC_ENV = 'FINEDUAL_JEMALLOC'
# Large blocks through jemalloc's ordinary arenas, whose freed pages wait (10 s) for reuse;
# background threads give back what an arena no thread allocates from any more still holds.
JEMALLOC_CONF = 'oversize_threshold:0,background_thread:true'
# No block is this large: arena 0's threshold after ``jemalloc_arena_zero_keeps_large_blocks``.
_NEVER = (1 << 64) - 1


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


def describe() -> dict[str, str | bool | None]:
  """What this process runs with, for benchmark reports."""
  tunables = os.environ.get('GLIBC_TUNABLES')
  named = _named(tunables)
  jemalloc = _jemalloc_loaded()
  return {'host_allocator': 'jemalloc' if jemalloc else 'glibc' if glibc_version() else None,
          'malloc_conf': os.environ.get('MALLOC_CONF') if jemalloc else None,
          'glibc_tunables': tunables, 'huge_pages': named.get(TUNABLE) in ('1', '2'),
          'keeps_freed_memory': all(named.get(k) == v for k, v in KEEP_FREED.items()),
          'transparent_huge_pages': transparent_huge_pages()}


def _jemalloc_loaded() -> bool:
  """Whether jemalloc is mapped into this process (Linux; False where that cannot be read)."""
  try:
    with open('/proc/self/maps') as f:
      return 'libjemalloc' in f.read()
  except OSError:
    return False


def _mallctl():
  """jemalloc's ``mallctl`` where jemalloc is loaded into this process, else None."""
  if not _jemalloc_loaded():
    return None
  try:
    mallctl = ctypes.CDLL(None).mallctl
  except (AttributeError, OSError):
    return None
  mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                      ctypes.c_void_p, ctypes.c_size_t]
  mallctl.restype = ctypes.c_int
  return mallctl


def _size_setting(mallctl, name: str, new: int | None = None) -> int | None:
  """Reads (and, given ``new``, then writes) jemalloc's ``size_t`` setting ``name``; its old
  value, or None where this jemalloc has no such setting or refused the write."""
  old, size = ctypes.c_size_t(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_size_t))
  value = None if new is None else ctypes.byref(ctypes.c_size_t(new))
  written = 0 if new is None else ctypes.sizeof(ctypes.c_size_t)
  if mallctl(name.encode(), ctypes.byref(old), ctypes.byref(size), value, written) != 0:
    return None
  return old.value


def jemalloc_arena_zero_keeps_large_blocks() -> bool:
  """Where jemalloc runs with its huge arena off (``oversize_threshold`` 0), lifts arena 0's own
  threshold, which jemalloc 5.3.0 leaves at 8 MiB, so that arena too keeps freed large blocks
  for the next call (see the module docstring). True where arena 0 then keeps them; False
  where jemalloc is not loaded, runs with a huge arena, or cannot say."""
  mallctl = _mallctl()
  if mallctl is None or _size_setting(mallctl, 'opt.oversize_threshold') != 0:
    return False
  # None where the write failed: a jemalloc before 5.3 has no such setting.
  return _size_setting(mallctl, 'arena.0.oversize_threshold', _NEVER) is not None


def jemalloc_library() -> str | None:
  """The jemalloc library to preload: ``FINEDUAL_JEMALLOC``'s path, else the one the loader's
  cache lists; None where it is turned off (``0``) or, unless asked for (``1``), not found."""
  choice = os.environ.get(JEMALLOC_ENV, '')
  if choice == '0':
    return None
  if choice not in ('', '1'):
    if not os.path.isfile(choice):
      raise ValueError(f'{JEMALLOC_ENV}: expected 0, 1 or the path of a jemalloc shared library, '
                       f'found {choice!r}, which is not a file.')
    return choice
  found = ctypes.util.find_library('jemalloc')
  if found is None and choice == '1':
    raise ValueError(f'{JEMALLOC_ENV}=1: no jemalloc library found (Debian: apt install '
                     'libjemalloc2); name one with FINEDUAL_JEMALLOC=/path/libjemalloc.so.2, or '
                     'set 0 for the C library\'s allocator.')
  return found


def _preloads(value: str | None) -> tuple[list[str], list[str]]:
  """An ``LD_PRELOAD`` value (entries split by colons or spaces) -> (jemalloc entries, others)."""
  entries = [e for e in (value or '').replace(' ', ':').split(':') if e]
  jemalloc = [e for e in entries if 'jemalloc' in os.path.basename(e)]
  return jemalloc, [e for e in entries if e not in jemalloc]


def preload_with(current: str | None, library: str) -> str | None:
  """``LD_PRELOAD`` with ``library`` added, or None when it already names a jemalloc library."""
  jemalloc, others = _preloads(current)
  return None if jemalloc else ':'.join(others + [library])


def without_jemalloc(environ: dict[str, str]) -> dict[str, str]:
  """``environ`` with jemalloc taken out of ``LD_PRELOAD``, for a child process that must run
  on the C library's allocator (see ``benchmark.topology_memory``)."""
  environ = dict(environ)
  _, others = _preloads(environ.pop('LD_PRELOAD', None))
  if others:
    environ['LD_PRELOAD'] = ':'.join(others)
  return environ


def environment_for_this_machine(*, jemalloc_by_default: bool = True) -> dict[str, str]:
  """The environment variables a process here should start with that it does not already have
  (empty where nothing would change; see the module docstring). With ``jemalloc_by_default``
  False, jemalloc only where ``FINEDUAL_JEMALLOC`` asks for it, else glibc's settings."""
  if not sys.platform.startswith('linux'):
    return {}
  _keep_freed()  # Checked here too: it only matters where glibc allocates.
  asked = os.environ.get(JEMALLOC_ENV, '') not in ('', '0')
  library = jemalloc_library() if jemalloc_by_default or asked else None
  if library is None:
    tunables = tunables_for_this_machine()
    return {} if tunables is None else {'GLIBC_TUNABLES': tunables}
  changes = {}
  preload = preload_with(os.environ.get('LD_PRELOAD'), library)
  if preload is not None:
    changes['LD_PRELOAD'] = preload
  if 'MALLOC_CONF' not in os.environ:
    changes['MALLOC_CONF'] = JEMALLOC_CONF
  return changes


def tunables_for_this_machine() -> str | None:
  """The ``GLIBC_TUNABLES`` value a process here should start with, None where it already has
  it or nothing would change (see the module docstring)."""
  if os.environ.get(OPT_OUT, '1') == '0' or not sys.platform.startswith('linux'):
    return None
  version = glibc_version()
  if version is None or version < (2, 35) or transparent_huge_pages() in (None, 'never'):
    return None
  return tunables_with_huge_pages(os.environ.get('GLIBC_TUNABLES'), keep_freed=_keep_freed())


def _keep_freed() -> bool:
  keep = os.environ.get(KEEP_OPT_IN, '0')
  if keep not in ('0', '1'):
    raise ValueError(f'{KEEP_OPT_IN}: expected 1 (keep freed host memory for the next call) or '
                     f'0 (give it back, the default), found {keep!r}.')
  return keep == '1'


def reexec_for_host_memory(*, jemalloc_by_default: bool = True) -> None:
  """Starts this command again with the allocator settings of ``environment_for_this_machine``
  (given ``jemalloc_by_default``) where they are missing (see the module docstring); otherwise
  returns, once jemalloc's arena 0 keeps large blocks where it runs with the huge arena off.
  Call it before any work is done."""
  changes = environment_for_this_machine(jemalloc_by_default=jemalloc_by_default)
  if not changes:
    jemalloc_arena_zero_keeps_large_blocks()
    return
  argv = getattr(sys, 'orig_argv', None)
  if not argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, **changes})
