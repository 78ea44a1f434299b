"""Trains the evaluator: ``python -m finedual_jax.train_evaluator --dataset_dir DIR --workdir OUT``.

InterCLIP's architecture (``evaluation/evaluator.py``) trained contrastively on a built data set
with its SentencePiece tokenizer (``evaluation/evaluator_trainer.py`` says how). The config is
``experiments/evaluator.py`` (``:size=interclip``, the official size, by default; ``:size=tiny``
for smoke runs); override fields with ``--config.train.num_steps=1000``. Resumes from
``OUT/checkpoints``; at the end writes ``OUT/evaluator/``, which
``python -m finedual_jax.evaluate --evaluator OUT/evaluator`` (or just ``OUT``) loads.
"""

from __future__ import annotations

import importlib.util

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from finedual_jax import host_memory
from finedual_jax.evaluation import evaluator_trainer

_DEFAULT_CONFIG = importlib.util.find_spec('experiments.evaluator').origin
_CONFIG = config_flags.DEFINE_config_file(
    'config', _DEFAULT_CONFIG, 'Evaluator config file, optionally with ":size=tiny".',
    lock_config=True)
_DATASET_DIR = flags.DEFINE_string('dataset_dir', None, 'A built data set (python -m '
                                   'data_pipelines.prepare); overrides config.data.dataset_dir.')
_WORKDIR = flags.DEFINE_string('workdir', 'evaluator_run', 'Checkpoints, logs and the export.')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every save at INFO.
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if _DATASET_DIR.value:
    config.data.dataset_dir = _DATASET_DIR.value  # Locked configs still take existing fields.
  try:
    summary = evaluator_trainer.train_evaluator(config, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  print(f'done: step {summary["step"]}; evaluator {summary["export"]}')


if __name__ == '__main__':
  host_memory.reexec_for_host_memory()
  app.run(main)
