"""The host allocator for XLA's buffers: jemalloc where installed, else glibc's huge pages; the
settings, the re-execution, and their effect on page faults (where the machine has jemalloc, or
glibc 2.35+ and transparent huge pages)."""

import ast
import ctypes.util
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
_JEMALLOC = sys.platform.startswith('linux') and ctypes.util.find_library('jemalloc')
needs_jemalloc = pytest.mark.skipif(
    not _JEMALLOC, reason='needs jemalloc installed (Debian: apt install libjemalloc2)')
_OURS = ('GLIBC_TUNABLES', 'LD_PRELOAD', 'MALLOC_CONF', host_memory.OPT_OUT,
         host_memory.KEEP_OPT_IN, host_memory.JEMALLOC_ENV)


def _env(**changes):
  """This process's environment without the allocator settings; glibc unless ``changes`` name
  ``FINEDUAL_JEMALLOC``."""
  env = {k: v for k, v in os.environ.items() if k not in _OURS}
  env.update({host_memory.JEMALLOC_ENV: '0', **changes})
  return env


def _python(code, *args, **env):
  result = subprocess.run([sys.executable, '-c', code, *args], env=_env(**env),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  return result.stdout.strip().splitlines()


_REEXEC = ('import os, sys\n'
           'from finedual_jax import host_memory\n'
           'print("start", flush=True)\n'
           'host_memory.reexec_for_host_memory()\n'
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
  monkeypatch.setenv(host_memory.JEMALLOC_ENV, '0')
  assert host_memory.environment_for_this_machine() == {
      'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
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
           'host_memory.reexec_for_host_memory()\n'
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
  assert main_block.lstrip().startswith('host_memory.reexec_for_host_memory()')


def test_preload_adds_jemalloc_once():
  lib = 'libjemalloc.so.2'
  assert host_memory.preload_with(None, lib) == lib
  assert host_memory.preload_with('', lib) == lib
  assert host_memory.preload_with('/opt/a.so', lib) == f'/opt/a.so:{lib}'
  assert host_memory.preload_with('/opt/a.so /opt/b.so', lib) == f'/opt/a.so:/opt/b.so:{lib}'
  # Already there (the re-executed process, or a user's own jemalloc): nothing to add.
  assert host_memory.preload_with(f'/opt/a.so:{lib}', lib) is None
  assert host_memory.preload_with('/usr/lib/x86_64-linux-gnu/libjemalloc.so.2', lib) is None


def test_without_jemalloc_keeps_the_other_preloads():
  environ = {'LD_PRELOAD': '/opt/libfoo.so:/usr/lib/libjemalloc.so.2 libbar.so', 'HOME': '/h'}
  assert host_memory.without_jemalloc(environ) == {'LD_PRELOAD': '/opt/libfoo.so:libbar.so',
                                                   'HOME': '/h'}
  assert host_memory.without_jemalloc({'LD_PRELOAD': 'libjemalloc.so.2'}) == {}
  assert host_memory.without_jemalloc({'HOME': '/h'}) == {'HOME': '/h'}
  assert environ['LD_PRELOAD'].endswith('libbar.so')  # The argument is not changed.


def test_jemalloc_library_is_found_named_or_turned_off(monkeypatch, tmp_path):
  monkeypatch.setattr(host_memory.ctypes.util, 'find_library',
                      lambda name: 'libjemalloc.so.2' if name == 'jemalloc' else None)
  monkeypatch.delenv(host_memory.JEMALLOC_ENV, raising=False)
  assert host_memory.jemalloc_library() == 'libjemalloc.so.2'
  monkeypatch.setenv(host_memory.JEMALLOC_ENV, '1')
  assert host_memory.jemalloc_library() == 'libjemalloc.so.2'
  monkeypatch.setenv(host_memory.JEMALLOC_ENV, '0')
  assert host_memory.jemalloc_library() is None
  library = tmp_path / 'libjemalloc.so.2'
  library.write_bytes(b'')
  monkeypatch.setenv(host_memory.JEMALLOC_ENV, str(library))
  assert host_memory.jemalloc_library() == str(library)
  monkeypatch.setenv(host_memory.JEMALLOC_ENV, str(tmp_path / 'missing.so'))
  with pytest.raises(ValueError, match=r"FINEDUAL_JEMALLOC: expected 0, 1 or the path .*"
                                       r"missing\.so', which is not a file"):
    host_memory.jemalloc_library()
  monkeypatch.setattr(host_memory.ctypes.util, 'find_library', lambda name: None)
  monkeypatch.delenv(host_memory.JEMALLOC_ENV)
  assert host_memory.jemalloc_library() is None  # Not installed: glibc, quietly.
  monkeypatch.setenv(host_memory.JEMALLOC_ENV, '1')  # Asked for: an error that says what to do.
  with pytest.raises(ValueError, match='FINEDUAL_JEMALLOC=1: no jemalloc library found'):
    host_memory.jemalloc_library()


def test_environment_prefers_jemalloc_and_keeps_a_users_settings(monkeypatch):
  monkeypatch.setattr(host_memory.sys, 'platform', 'linux')
  monkeypatch.setattr(host_memory.ctypes.util, 'find_library', lambda name: 'libjemalloc.so.2')
  for name in _OURS:
    monkeypatch.delenv(name, raising=False)
  wanted = {'LD_PRELOAD': 'libjemalloc.so.2', 'MALLOC_CONF': host_memory.JEMALLOC_CONF}
  assert host_memory.environment_for_this_machine() == wanted
  for name, value in wanted.items():  # The re-executed process: nothing more to change.
    monkeypatch.setenv(name, value)
  assert host_memory.environment_for_this_machine() == {}
  monkeypatch.setenv('MALLOC_CONF', 'narenas:2')  # A user's own configuration is kept.
  monkeypatch.delenv('LD_PRELOAD')
  assert host_memory.environment_for_this_machine() == {'LD_PRELOAD': 'libjemalloc.so.2'}
  monkeypatch.setenv(host_memory.KEEP_OPT_IN, 'yes')  # Checked even where glibc is not used.
  with pytest.raises(ValueError, match=f"{host_memory.KEEP_OPT_IN}: expected 1"):
    host_memory.environment_for_this_machine()


def test_without_jemalloc_by_default_it_is_preloaded_only_when_asked_for(monkeypatch):
  monkeypatch.setattr(host_memory.sys, 'platform', 'linux')
  monkeypatch.setattr(host_memory.ctypes.util, 'find_library', lambda name: 'libjemalloc.so.2')
  for name in _OURS:
    monkeypatch.delenv(name, raising=False)
  tunables = host_memory.tunables_for_this_machine()
  glibc = {} if tunables is None else {'GLIBC_TUNABLES': tunables}
  assert host_memory.environment_for_this_machine(jemalloc_by_default=False) == glibc
  monkeypatch.setenv(host_memory.JEMALLOC_ENV, '1')
  assert host_memory.environment_for_this_machine(jemalloc_by_default=False) == {
      'LD_PRELOAD': 'libjemalloc.so.2', 'MALLOC_CONF': host_memory.JEMALLOC_CONF}


def test_torch_comparison_reexecs_first_without_jemalloc_by_default():
  """PyTorch's training step ran about 45% slower with the commands' jemalloc configuration, so the
  comparison starts both frameworks on glibc unless FINEDUAL_JEMALLOC asks otherwise."""
  source = (pathlib.Path(host_memory.__file__).parent / 'torch_comparison.py').read_text()
  [main] = [node for node in ast.parse(source).body if isinstance(node, ast.If)
            and ast.unparse(node.test) == "__name__ == '__main__'"]
  first = main.body[0].value
  assert ast.unparse(first.func) == 'host_memory.reexec_for_host_memory'
  assert [(k.arg, ast.literal_eval(k.value)) for k in first.keywords] == [
      ('jemalloc_by_default', False)]


_ALLOCATOR = ('import os\n'
              'from finedual_jax import host_memory\n'
              'print("start", flush=True)\n'
              'host_memory.reexec_for_host_memory()\n'
              'd = host_memory.describe()\n'
              'print(d["host_allocator"], d["malloc_conf"], d["huge_pages"])\n')


@needs_jemalloc
def test_reexec_preloads_jemalloc_where_installed():
  assert _python(_ALLOCATOR, **{host_memory.JEMALLOC_ENV: ''}) == [
      'start', 'start', f'jemalloc {host_memory.JEMALLOC_CONF} False']
  # Turned off: glibc, with huge pages where the machine has them.
  lines = _python(_ALLOCATOR)
  assert lines[-1] == f'glibc None {_SUPPORTED}'


_FAULTS_PER_CALL = ('import resource, statistics, jax, jax.numpy as jnp\n'
                    'from finedual_jax import host_memory\n'
                    'host_memory.reexec_for_host_memory()\n'
                    'f = jax.jit(lambda x: jnp.sum(jnp.tanh(x @ x.T) @ x))\n'
                    'x = jnp.ones((4096, 256))\n'
                    'f(x).block_until_ready()\n'
                    'faults = []\n'
                    'for _ in range(9):\n'
                    '  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n'
                    '  f(x).block_until_ready()\n'
                    '  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n'
                    'print(statistics.median(faults))\n')


@needs_jemalloc
def test_jemalloc_serves_the_next_calls_without_page_faults():
  # Each call's 64 MiB temporary: with jemalloc's default configuration (a user's MALLOC_CONF,
  # here empty, is kept) it is returned to the kernel at once and faulted in again, 16,384
  # faults a call. Medians: now and then a call's block comes from another thread's arena,
  # still cold (more often with the tests' 8 fake devices; the commands train on one).
  one_device = {host_memory.JEMALLOC_ENV: '', 'XLA_FLAGS': ''}
  returned = float(_python(_FAULTS_PER_CALL, **one_device, MALLOC_CONF='')[-1])
  kept = float(_python(_FAULTS_PER_CALL, **one_device)[-1])
  # Every thread on arena 0, which jemalloc 5.3.0 sets up with the default threshold: without
  # the re-executed process's correction each call faults its block in again.
  only_arena_zero = f'{host_memory.JEMALLOC_CONF},narenas:1'
  kept_on_arena_zero = float(
      _python(_FAULTS_PER_CALL, **one_device, MALLOC_CONF=only_arena_zero)[-1])
  assert returned > 16_000
  assert kept < 100
  assert kept_on_arena_zero < 100


_ARENA_ZERO = ('from finedual_jax import host_memory\n'
               'host_memory.reexec_for_host_memory()\n'
               'print(host_memory.jemalloc_arena_zero_keeps_large_blocks())\n')


@needs_jemalloc
def test_arena_zero_keeps_large_blocks_only_with_the_huge_arena_off():
  assert _python(_ARENA_ZERO, **{host_memory.JEMALLOC_ENV: ''}) == ['True']
  # A user's configuration with the huge arena on is left as it is.
  assert _python(_ARENA_ZERO, **{host_memory.JEMALLOC_ENV: ''}, MALLOC_CONF='') == ['False']


def test_arena_zero_is_left_alone_without_jemalloc():
  assert _python(_ARENA_ZERO) == ['False']
