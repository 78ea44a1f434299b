"""Builds a training-ready data set: TFDS records plus normalisation statistics and tokenizer.

    python -m data_pipelines.prepare --manual_dir /path/to/InterHuman --data_dir ~/tensorflow_datasets
    python -m data_pipelines.prepare --synthetic --manual_dir /tmp/synthetic --data_dir /tmp/tfds
    python -m data_pipelines.prepare --dataset interx --manual_dir /path/to/Inter-X \
        --data_dir ~/tensorflow_datasets [--smplx_model /path/to/SMPLX_NEUTRAL.npz]

InterHuman options: ``--on_error skip`` leaves bad clips out (recorded in build_report.json)
instead of stopping; ``--decompositions FILE.jsonl`` (repeatable) supplies LLM per-person texts.

The statistics and the SentencePiece model are artefacts of the build and are written into the
TFDS version folder beside the records, so they are versioned with them.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
from typing import Sequence

import numpy as np

from data_pipelines import interhuman
from data_pipelines import interx
from data_pipelines import synthetic_interhuman
from finedual_jax.data import pipeline
from finedual_jax.data import tokenizer as tokenizer_lib


def compute_statistics(dataset_dir: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std of the features (262 or 138 wide) of the whole training split, both persons."""
  source = pipeline.data_source(dataset_dir, 'train')
  representation = pipeline.representation_of(dataset_dir)
  total = np.zeros(representation.feature_dim)
  total_sq = np.zeros(representation.feature_dim)
  count = 0
  for i in range(len(source)):
    feats = representation.pair_features(source[i]['motion'])
    feats = feats.reshape(-1, representation.feature_dim).astype(np.float64)
    total += feats.sum(axis=0)
    total_sq += (feats ** 2).sum(axis=0)
    count += feats.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
  return mean.astype(np.float32), np.maximum(std, pipeline.STD_FLOOR).astype(np.float32)


def training_texts(dataset_dir: str | pathlib.Path) -> list[str]:
  """All captions and per-person texts of the training split, in record order."""
  source = pipeline.data_source(dataset_dir, 'train')
  texts = []
  for i in range(len(source)):
    example = source[i]
    for key in ('captions', 'person1_texts', 'person2_texts'):
      texts.extend(t.decode('utf-8') if isinstance(t, bytes) else t for t in example[key])
  return texts


def build_artifacts(dataset_dir: str | pathlib.Path, *, vocab_size: int) -> None:
  """Writes the statistics and the tokenizer into ``dataset_dir`` (atomically, each)."""
  dataset_dir = pathlib.Path(dataset_dir)
  mean, std = compute_statistics(dataset_dir)
  with tempfile.NamedTemporaryFile(dir=dataset_dir, suffix='.npz', delete=False) as f:
    np.savez(f, mean=mean, std=std)
  os.replace(f.name, dataset_dir / pipeline.STATS_FILE)
  tokenizer_lib.train_tokenizer(training_texts(dataset_dir), dataset_dir / pipeline.TOKENIZER_FILE,
                                vocab_size=vocab_size)


def is_complete(dataset_dir: pathlib.Path) -> bool:
  """Whether ``dataset_dir`` holds records, statistics and tokenizer (what training reads)."""
  return all((dataset_dir / name).is_file() for name in
             ('dataset_info.json', pipeline.STATS_FILE, pipeline.TOKENIZER_FILE))


def prepare(manual_dir: str | pathlib.Path, data_dir: str | pathlib.Path, *,
            vocab_size: int = 1000, on_error: str = 'strict',
            decomposition_files: Sequence[str | pathlib.Path] = ()) -> pathlib.Path:
  """Converts an InterHuman-layout folder and builds the artefacts; returns the data set folder.

  Idempotent: an already complete build is reused as it is (delete it to rebuild with other
  options). The records, statistics and tokenizer appear together or not at all.
  """
  dataset_dir = pathlib.Path(data_dir) / interhuman.InterHuman.name / str(interhuman.InterHuman.VERSION)
  if is_complete(dataset_dir):
    return dataset_dir
  return interhuman.build(manual_dir, data_dir, on_error=on_error,
                          decomposition_files=decomposition_files,
                          finalize=lambda staged: build_artifacts(staged, vocab_size=vocab_size))


def prepare_interx(manual_dir: str | pathlib.Path, data_dir: str | pathlib.Path, *,
                   smplx_model: str | pathlib.Path | None = None, vocab_size: int = 1000,
                   **layout: str) -> pathlib.Path:
  """Converts an Inter-X folder (``data_pipelines.interx``) and builds the artefacts.

  With ``smplx_model`` the data set stores joint positions (the 262-d features, every loss);
  without, the rotation representation (138-d features, position losses off in training).
  """
  dataset_dir = pathlib.Path(data_dir) / interx.dataset_subdir(smplx_model)
  if is_complete(dataset_dir):
    return dataset_dir
  return interx.build(manual_dir, data_dir, smplx_model=smplx_model,
                      finalize=lambda staged: build_artifacts(staged, vocab_size=vocab_size),
                      **layout)


def prepare_synthetic(raw_dir: str | pathlib.Path, data_dir: str | pathlib.Path, *, seed: int = 0,
                      clips_per_type: int = 24, vocab_size: int = 1000) -> pathlib.Path:
  """Generates the synthetic InterHuman-layout data set (if absent) and prepares it."""
  raw_dir = pathlib.Path(raw_dir)
  if not (raw_dir / 'split' / 'train.txt').is_file():
    synthetic_interhuman.generate(raw_dir, seed=seed, clips_per_type=clips_per_type)
  return prepare(raw_dir, data_dir, vocab_size=vocab_size)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', choices=('interhuman', 'interx'), default='interhuman',
                      help='layout of --manual_dir')
  parser.add_argument('--manual_dir', required=True,
                      help='the InterHuman or Inter-X download (read only)')
  parser.add_argument('--data_dir', required=True, help='TFDS data directory (written).')
  parser.add_argument('--synthetic', action='store_true',
                      help='generate the synthetic data set into --manual_dir first')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--clips_per_type', type=int, default=24)
  parser.add_argument('--vocab_size', type=int, default=1000)
  parser.add_argument('--on_error', choices=interhuman.ON_ERROR, default='strict',
                      help='strict: stop at the first bad file; skip: leave it out and record it '
                      f'in {interhuman.REPORT_FILE}')
  parser.add_argument('--decompositions', action='append', default=[], metavar='JSONL',
                      help='per-person texts from python -m data_pipelines.llm_decompose '
                      '(repeatable; they win over annots_individual/ and the rule-based split)')
  parser.add_argument('--smplx_model', default=None,
                      help='Inter-X only: your SMPL-X model file (e.g. SMPLX_NEUTRAL.npz) for joint '
                      'positions; without it the rotation representation is built')
  args = parser.parse_args(argv)
  if args.dataset != 'interx' and args.smplx_model:
    parser.error('--smplx_model is only used with --dataset interx')
  if args.dataset == 'interx' and (args.decompositions or args.on_error != 'strict'):
    parser.error('--decompositions and --on_error apply to InterHuman builds only')
  try:
    if args.dataset == 'interx':
      path = prepare_interx(args.manual_dir, args.data_dir, smplx_model=args.smplx_model,
                            vocab_size=args.vocab_size)
    elif args.synthetic:
      path = prepare_synthetic(args.manual_dir, args.data_dir, seed=args.seed,
                               clips_per_type=args.clips_per_type, vocab_size=args.vocab_size)
    else:
      path = prepare(args.manual_dir, args.data_dir, vocab_size=args.vocab_size,
                     on_error=args.on_error, decomposition_files=args.decompositions)
  except (ValueError, OSError) as e:  # Bad input: the message names the file and the problem.
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'data set ready: {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
