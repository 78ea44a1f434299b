"""Test setup: 8 fake CPU devices for the sharding tests (must happen before JAX is imported)."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                      '--xla_cpu_collective_call_terminate_timeout_seconds=60')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from finedual_jax import host_memory  # noqa: E402  (imports neither JAX nor NumPy)

# pytest-xdist's workers and the tests' subprocesses start after this: with huge pages, as the
# command-line entry points run (finedual_jax/host_memory.py).
if (_tunables := host_memory.tunables_for_this_machine()) is not None:
  os.environ['GLIBC_TUNABLES'] = _tunables


import pytest  # noqa: E402  (after the environment above, before anything imports JAX)


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  """JAX's persistent compilation cache, on for the module that asks: its runs that compile the
  same step load it instead of compiling it again (the path, for subprocesses' environment)."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache
  path = tmp_path_factory.mktemp('compilation_cache')
  previous = {k: jax.config.values[k] for k in ('jax_compilation_cache_dir',
                                                'jax_persistent_cache_min_compile_time_secs')}
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  compilation_cache.reset_cache()
  yield path
  for key, value in previous.items():
    jax.config.update(key, value)
  compilation_cache.reset_cache()


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory):
  """The tiny default config trained once per test session: (config, workdir, summary)."""
  from experiments import default
  from finedual_jax import trainer
  workdir = tmp_path_factory.mktemp('run')
  config = default.get_config('size=tiny')
  summary = trainer.train_and_evaluate(config, workdir)
  return config, workdir, summary


@pytest.hookimpl(tryfirst=True)  # Before xdist reads the groups (its hook, same name).
def pytest_collection_modifyitems(items):
  # `-n auto --dist loadgroup` (.ci/run) sends each group to one worker. A file's tests share
  # its module fixtures and cached compiled steps, so each file is a group; the tests that use
  # the session's trained run form one group, so the tiny config is trained once, not once per
  # worker.
  for item in items:
    uses_run = 'trained_run' in getattr(item, 'fixturenames', ())
    group = 'trained_run' if uses_run else item.nodeid.split('::')[0]
    item.add_marker(pytest.mark.xdist_group(group))
