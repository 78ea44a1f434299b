"""Builds a training-ready data set: TFDS records plus normalisation statistics and tokenizer.

    python -m data_pipelines.prepare --manual_dir /path/to/InterHuman --data_dir ~/tensorflow_datasets
    python -m data_pipelines.prepare --synthetic --manual_dir /tmp/synthetic --data_dir /tmp/tfds

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
from data_pipelines import synthetic_interhuman
from finedual_jax.data import pipeline
from finedual_jax.data import tokenizer as tokenizer_lib
from finedual_jax.motion import features as features_lib


def compute_statistics(dataset_dir: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std [262] of the 262-d features of the whole training split, both persons."""
  source = pipeline.data_source(dataset_dir, 'train')
  total = np.zeros(features_lib.FEATURE_DIM)
  total_sq = np.zeros(features_lib.FEATURE_DIM)
  count = 0
  for i in range(len(source)):
    feats = features_lib.canonical_pair_features(*pipeline.split_motion(source[i]['motion']))
    feats = feats.reshape(-1, features_lib.FEATURE_DIM).astype(np.float64)
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


def prepare_synthetic(raw_dir: str | pathlib.Path, data_dir: str | pathlib.Path, *, seed: int = 0,
                      clips_per_type: int = 24, vocab_size: int = 1000) -> pathlib.Path:
  """Generates the synthetic InterHuman-layout data set (if absent) and prepares it."""
  raw_dir = pathlib.Path(raw_dir)
  if not (raw_dir / 'split' / 'train.txt').is_file():
    synthetic_interhuman.generate(raw_dir, seed=seed, clips_per_type=clips_per_type)
  return prepare(raw_dir, data_dir, vocab_size=vocab_size)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--manual_dir', required=True, help='InterHuman-layout folder (read).')
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
  args = parser.parse_args(argv)
  try:
    if args.synthetic:
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
