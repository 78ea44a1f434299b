"""The reference clips of an evaluation: a split's motions, texts and lengths, deterministically.

Per clip (eval mode: no random crop, no person swap, no mirroring): the first
``max_frames + 1`` frames (the 262-d features need frame t+1, DESIGN §1.1) canonicalised into
person 1's frame, so ``min(T - 1, max_frames)`` feature rows; the **first caption** of the clip
and the per-person texts aligned with it. (InterGen's test loader draws one of the ~3 captions
at random on every read; caption 0 gives every run and replication the same texts, so runs
differ only by their motions.) Mirrored records, which only training splits hold, are left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np

from finedual_jax.data import pipeline
from finedual_jax.data import representation as representation_lib

CAPTION_INDEX = 0


@dataclasses.dataclass(frozen=True)
class Clips:
  """N clips padded to T = ``max_frames`` feature rows (zeros after each length)."""
  dataset_dir: pathlib.Path
  split: str
  indices: np.ndarray         # [N] record index in the split (keys the generation noise).
  clip_ids: tuple[str, ...]
  texts: tuple[str, ...]      # The overall caption (CAPTION_INDEX).
  person1: tuple[str, ...]
  person2: tuple[str, ...]
  features: np.ndarray        # [N, T, 2, F] float32, de-normalised (raw feature values).
  lengths: np.ndarray         # [N] int32 valid rows.

  @property
  def mask(self) -> np.ndarray:
    """[N, T] float32."""
    return (np.arange(self.features.shape[1])[None] < self.lengths[:, None]).astype(np.float32)

  def __len__(self) -> int:
    return len(self.clip_ids)

  def fingerprint(self) -> str:
    """A hash of what generation depends on: which clips, their texts and lengths."""
    record = [self.indices.tolist(), list(self.clip_ids), list(self.texts), list(self.person1),
              list(self.person2), self.lengths.tolist(), int(self.features.shape[1])]
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()[:16]


def clip_features(representation: representation_lib.Representation, motion: np.ndarray,
                  max_frames: int) -> np.ndarray:
  """A stored clip [T, 2, stored] -> eval-mode features [rows, 2, F] from its first frames."""
  window = min(motion.shape[0], max_frames + 1)
  return representation.pair_features(motion[:window]).transpose(1, 0, 2)


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def load_clips(dataset_dir: str | pathlib.Path, split: str, *, max_frames: int,
               limit: int | None = None) -> Clips:
  """The clips of ``split`` (the first ``limit`` in record order, if given)."""
  dataset_dir = pathlib.Path(dataset_dir)
  if max_frames < 1:
    raise ValueError(f'max_frames must be >= 1, got {max_frames}.')
  representation = pipeline.representation_of(dataset_dir)
  try:
    source = pipeline.data_source(dataset_dir, split)
  except ValueError as e:
    raise ValueError(f'{e} Use a data set with a {split!r} split (the build reads '
                     f'split/{split}.txt), or pick a split it has (evaluate: --split; '
                     'train_evaluator: --config.eval.split).') from None
  indices, ids, texts, person1, person2, feats = [], [], [], [], [], []
  for index in range(len(source)):
    if limit is not None and len(indices) >= limit:
      break
    record = source[index]
    if bool(record.get('mirrored', False)):
      continue
    captions = record['captions']
    if len(captions) == 0:
      continue
    indices.append(index)
    ids.append(_text(record['clip_id']))
    texts.append(_text(captions[CAPTION_INDEX]))
    person1.append(_text(record['person1_texts'][CAPTION_INDEX]))
    person2.append(_text(record['person2_texts'][CAPTION_INDEX]))
    feats.append(clip_features(representation, record['motion'], max_frames))
  if not indices:
    raise ValueError(f'{dataset_dir}: split {split!r} has no usable clips to evaluate on.')
  features = np.zeros((len(feats), max_frames, 2, representation.feature_dim), np.float32)
  lengths = np.zeros((len(feats),), np.int32)
  for i, f in enumerate(feats):
    features[i, :f.shape[0]] = f
    lengths[i] = f.shape[0]
  return Clips(dataset_dir, split, np.asarray(indices, np.int64), tuple(ids), tuple(texts),
               tuple(person1), tuple(person2), features, lengths)
