"""Lists the texts a built data set needs frozen features for, and writes feature files.

    python -m data_pipelines.text_features --dataset_dir /data/tfds/interhuman/0.1.0 --out texts.txt

Encode each line of ``texts.txt`` with your frozen text encoder (for example a CLIP text tower
you have locally; nothing is downloaded here), then store the result with ``write_bank`` (or
any code that writes the same arrays; format in ``finedual_jax/data/text_features.py``) and
train with ``--config.data.text_features_file=features.npz``. Prompts you later sample must
be in the file too.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
from typing import Sequence

import numpy as np

from finedual_jax.data import pipeline
from finedual_jax.data import text_features


def list_texts(dataset_dir: str | pathlib.Path, splits: Sequence[str] = ('train', 'val', 'test')
               ) -> list[str]:
  """Every distinct caption and per-person text of ``splits``, whitespace-collapsed, sorted."""
  texts = set()
  for split in splits:
    source = pipeline.data_source(dataset_dir, split)
    for i in range(len(source)):
      example = source[i]
      for key in ('captions', 'person1_texts', 'person2_texts'):
        for text in example[key]:
          texts.add(text_features.normalise_text(
              text.decode('utf-8') if isinstance(text, bytes) else text))
  return sorted(texts)


def write_bank(path: str | pathlib.Path, texts: Sequence[str], features: np.ndarray,
               lengths: Sequence[int]) -> pathlib.Path:
  """Writes a feature file (atomically) and checks that it loads; returns its path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=path.parent, suffix='.npz', delete=False) as f:
    np.savez(f, texts=np.asarray(list(texts), dtype=str), features=np.asarray(features),
             lengths=np.asarray(lengths, np.int32))
  try:
    text_features.TextFeatureBank(f.name)
  except ValueError:
    os.unlink(f.name)
    raise
  os.replace(f.name, path)
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset_dir', required=True, help='a built TFDS version folder')
  parser.add_argument('--out', required=True, help='text file written, one text per line')
  parser.add_argument('--splits', default='train,val,test')
  args = parser.parse_args(argv)
  try:
    texts = list_texts(args.dataset_dir, args.splits.split(','))
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  out.write_text(''.join(t + '\n' for t in texts), encoding='utf-8')
  print(f'{len(texts)} texts -> {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
