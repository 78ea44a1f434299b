"""Huge pages for XLA's host buffers: the tunable, the re-execution, and its effect on page
faults (where the machine has glibc 2.35+ and transparent huge pages)."""

import os
import pathlib
import subprocess
import sys

import pytest

from finedual_jax import host_memory

_SUPPORTED = (sys.platform.startswith('linux') and (host_memory.glibc_version() or (0,)) >= (2, 35)
              and host_memory.transparent_huge_pages() not in (None, 'never'))
needs_huge_pages = pytest.mark.skipif(
    not _SUPPORTED, reason='needs Linux, glibc >= 2.35 and transparent huge pages not "never"')


def _env(**changes):
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', host_memory.OPT_OUT,
                                                         host_memory.KEEP_OPT_IN)}
  env.update(changes)
  return env


def _python(code, *args, **env):
  result = subprocess.run([sys.executable, '-c', code, *args], env=_env(**env),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  return result.stdout.strip().splitlines()


_REEXEC = ('import os, sys\n'
           'from finedual_jax import host_memory\n'
           'print("start", flush=True)\n'
           'host_memory.reexec_with_huge_pages()\n'
           'print(os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])\n')


def test_tunables_add_huge_pages_and_keep_a_users_choice():
  assert host_memory.tunables_with_huge_pages(None) == 'glibc.malloc.hugetlb=1'
  assert host_memory.tunables_with_huge_pages('') == 'glibc.malloc.hugetlb=1'
  assert (host_memory.tunables_with_huge_pages('glibc.malloc.arena_max=2')
          == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1')
  assert host_memory.tunables_with_huge_pages('glibc.malloc.hugetlb=0') is None
  assert host_memory.tunables_with_huge_pages('a=1:glibc.malloc.hugetlb=1') is None


def test_keeping_freed_memory_adds_its_tunables_and_keeps_a_users_choice():
  keep = ':'.join(f'{k}={v}' for k, v in host_memory.KEEP_FREED.items())
  assert host_memory.tunables_with_huge_pages(None, keep_freed=True) == (
      f'glibc.malloc.hugetlb=1:{keep}')
  # The re-executed process names them all: nothing more to add.
  assert host_memory.tunables_with_huge_pages(f'glibc.malloc.hugetlb=1:{keep}', True) is None
  # Huge pages already on (a run without the opt-in): only the missing entries are added.
  assert host_memory.tunables_with_huge_pages('glibc.malloc.hugetlb=1', True) == (
      f'glibc.malloc.hugetlb=1:{keep}')
  mine = 'glibc.malloc.arena_max=4'
  added = host_memory.tunables_with_huge_pages(mine, True).split(':')
  assert added[0] == mine and 'glibc.malloc.arena_max=1' not in added
  assert 'glibc.malloc.mmap_max=0' in added


def test_keeping_freed_memory_is_opt_in_and_checked(monkeypatch):
  monkeypatch.setattr(host_memory, 'glibc_version', lambda: (2, 36))
  monkeypatch.setattr(host_memory, 'transparent_huge_pages', lambda: 'madvise')
  monkeypatch.setattr(host_memory.sys, 'platform', 'linux')
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  monkeypatch.delenv(host_memory.OPT_OUT, raising=False)
  monkeypatch.delenv(host_memory.KEEP_OPT_IN, raising=False)
  assert host_memory.tunables_for_this_machine() == 'glibc.malloc.hugetlb=1'
  monkeypatch.setenv(host_memory.KEEP_OPT_IN, '1')
  assert 'glibc.malloc.mmap_max=0' in host_memory.tunables_for_this_machine()
  monkeypatch.setenv('GLIBC_TUNABLES', host_memory.tunables_for_this_machine())
  assert host_memory.describe()['keeps_freed_memory'] is True
  assert host_memory.tunables_for_this_machine() is None
  monkeypatch.setenv(host_memory.KEEP_OPT_IN, 'yes')
  with pytest.raises(ValueError, match=f"{host_memory.KEEP_OPT_IN}: expected 1 .* found 'yes'"):
    host_memory.tunables_for_this_machine()


def test_describe_says_whether_huge_pages_are_on(monkeypatch):
  for tunables, on in [('glibc.malloc.hugetlb=1', True), ('a=1:glibc.malloc.hugetlb=2', True),
                       ('glibc.malloc.hugetlb=0', False), ('glibc.malloc.arena_max=2', False)]:
    monkeypatch.setenv('GLIBC_TUNABLES', tunables)
    assert host_memory.describe()['huge_pages'] is on, tunables
  monkeypatch.delenv('GLIBC_TUNABLES')
  assert host_memory.describe()['huge_pages'] is False


@needs_huge_pages
def test_reexec_runs_the_same_command_once_with_the_tunable():
  lines = _python(_REEXEC, 'x', '--flag=1', GLIBC_TUNABLES='glibc.malloc.arena_max=2')
  # "start" twice: the command ran again, once; its arguments and other tunables survive.
  assert lines == ['start', 'start',
                   "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1 ['x', '--flag=1']"]


def test_reexec_leaves_an_opted_out_or_configured_process_alone():
  assert _python(_REEXEC, **{host_memory.OPT_OUT: '0'}) == ['start', 'None []']
  assert _python(_REEXEC, GLIBC_TUNABLES='glibc.malloc.hugetlb=0') == [
      'start', 'glibc.malloc.hugetlb=0 []']


_FAULTS = ('import resource, jax, jax.numpy as jnp\n'
           'from finedual_jax import host_memory\n'
           'host_memory.reexec_with_huge_pages()\n'
           'f = jax.jit(lambda x: jnp.sum(jnp.tanh(x @ x.T) @ x))\n'
           'x = jnp.ones((4096, 256))\n'
           'f(x).block_until_ready()\n'
           'before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n'
           'for _ in range(5): f(x).block_until_ready()\n'
           'print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n')


@needs_huge_pages
def test_huge_pages_cut_the_page_faults_of_repeated_calls():
  # Each call's 64 MiB [4096, 4096] temporary is mapped afresh: 16,384 faults with 4 KiB pages.
  small_pages = int(_python(_FAULTS, **{host_memory.OPT_OUT: '0'})[-1])
  huge_pages = int(_python(_FAULTS)[-1])
  assert small_pages > 3 * 16_000
  assert huge_pages < small_pages / 10


@needs_huge_pages
def test_kept_freed_memory_serves_the_next_calls_without_page_faults():
  huge_pages = int(_python(_FAULTS)[-1])
  kept = int(_python(_FAULTS, **{host_memory.KEEP_OPT_IN: '1'})[-1])
  assert huge_pages >= 5 * 32  # Five calls, each mapping 64 MiB afresh in 2 MiB pages.
  assert kept < huge_pages / 4


@pytest.mark.parametrize('module', ['train', 'sample', 'evaluate', 'train_evaluator',
                                    'benchmark', 'data/benchmark'])
def test_every_command_line_entry_point_reexecs_first(module):
  source = (pathlib.Path(host_memory.__file__).parent / f'{module}.py').read_text()
  main_block = source.split("if __name__ == '__main__':\n", 1)[1]
  assert main_block.lstrip().startswith('host_memory.reexec_with_huge_pages()')
