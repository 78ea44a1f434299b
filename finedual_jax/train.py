"""Trains FineDual: ``python -m finedual_jax.train [--config FILE[:variant]] [--workdir DIR]``.

With no flags it runs the embedded default (experiments/default.py): it builds the synthetic
data set, trains a small model on the CPU for a few minutes, checkpoints it and renders a
sample, printing where everything went. Override any field with ``--config.train.num_steps=10``.

Several processes (hosts, or one per GPU) train together when ``jax.distributed`` is set up:
pass ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on each, or run under
a scheduler JAX detects by itself (Cloud TPU pods, SLURM, Open MPI; also
``JAX_COORDINATOR_ADDRESS``) with ``--distributed=on``. Rerunning the same command resumes from
the latest good checkpoint; SIGTERM saves a checkpoint and exits 0.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from finedual_jax import config_checks
from finedual_jax import host_memory
from finedual_jax import parallel
from finedual_jax import trainer

_DEFAULT_CONFIG = importlib.util.find_spec('experiments.default').origin
_CONFIG = config_flags.DEFINE_config_file(
    'config', _DEFAULT_CONFIG, 'Experiment config file, optionally with ":variant".',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'finedual_run', 'Where checkpoints, logs and samples go.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-process runs: HOST:PORT of process 0 (the same on every '
    'process); starts jax.distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process runs: how many.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'Multi-process runs: this process, 0 .. num_processes - 1.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'on', 'off'],
    'Start jax.distributed: "auto" does when --coordinator_address or JAX_COORDINATOR_ADDRESS '
    'is given or a SLURM/Open MPI launch has more than one task; "on" always (Cloud TPU pods: '
    'JAX finds the hosts itself); "off" never.')


def _wants_distributed() -> bool:
  if _DISTRIBUTED.value != 'auto':
    return _DISTRIBUTED.value == 'on'
  tasks = os.environ.get('SLURM_NTASKS') or os.environ.get('OMPI_COMM_WORLD_SIZE') or '1'
  return bool(_COORDINATOR.value or os.environ.get('JAX_COORDINATOR_ADDRESS')
              or (tasks.isdigit() and int(tasks) > 1))


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a readable error for a config field the config does not have."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on '
             'flags.')
  except (AttributeError, KeyError) as e:  # ml_collections: a locked config lacks the field.
    sys.exit(f'FATAL Flags parsing error: {config_checks.unknown_field_message(e, argv)}')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every save at INFO; keep the output readable.
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  try:
    config_checks.validate(config)  # Before any device, data or compilation.
  except config_checks.ConfigError as e:
    sys.exit(f'error: {e}')
  if _wants_distributed():
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    summary = trainer.train_and_evaluate(config, _WORKDIR.value)
  except (config_checks.ConfigError, FloatingPointError) as e:
    sys.exit(f'error: {e}')
  if summary['preempted']:
    print(f'stopped by {summary["preempted"]} at step {summary["step"]} with a checkpoint; '
          f'workdir {summary["workdir"]}', flush=True)
    return
  print(f'done: step {summary["step"]}, loss {summary["metrics"].get("total", float("nan")):.4f}; '
        f'workdir {summary["workdir"]}')


if __name__ == '__main__':
  host_memory.reexec_for_host_memory()
  app.run(main, flags_parser=_parse_flags)
