"""Trains FineDual: ``python -m finedual_jax.train [--config FILE[:variant]] [--workdir DIR]``.

With no flags it runs the embedded default (experiments/default.py): it builds the synthetic
data set, trains a small model on the CPU for a few minutes, checkpoints it and renders a
sample, printing where everything went. Override any field with ``--config.train.num_steps=10``.
"""

from __future__ import annotations

import importlib.util

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from finedual_jax import trainer

_DEFAULT_CONFIG = importlib.util.find_spec('experiments.default').origin
_CONFIG = config_flags.DEFINE_config_file(
    'config', _DEFAULT_CONFIG, 'Experiment config file, optionally with ":variant".',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', 'finedual_run', 'Where checkpoints, logs and samples go.')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every save at INFO; keep the output readable.
    logging.set_verbosity(logging.WARNING)
  summary = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(f'done: step {summary["step"]}, loss {summary["metrics"].get("total", float("nan")):.4f}; '
        f'workdir {summary["workdir"]}')


if __name__ == '__main__':
  app.run(main)
