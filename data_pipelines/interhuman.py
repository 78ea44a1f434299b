"""TFDS builder for InterHuman's official on-disk layout (DESIGN §1.2), written as array_record.

The user's download is the manual directory::

    ROOT/annots/<id>.txt, ROOT/motions_processed/person{1,2}/<id>.npy,
    ROOT/split/{train,val,test}.txt, ROOT/split/ignore_list.txt,
    ROOT/annots_individual/person{1,2}/<id>.txt   (optional per-person texts)

Each example keeps both persons' used raw columns (body positions and local 6D rotations) in
the y-up world frame, uncropped: cropping and canonicalisation happen at read time so that the
canonical frame follows the crop. Every training clip also appears mirrored.
"""

from __future__ import annotations

import logging
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from finedual_jax.data import decompose
from finedual_jax.motion import features as features_lib

MIN_FRAMES = 15  # Shorter clips are dropped, as the reference loader does.
SPLITS = ('train', 'val', 'test')
TEXT_SOURCE_FILE, TEXT_SOURCE_RULE = 'file', 'rule'

_SIDE_WORDS = re.compile(
    r'\b(counter-?clockwise|anti-?clockwise|clockwise|left|right)(?=(?:wards?|most)?\b)',
    re.IGNORECASE)
_SIDE_SWAP = {'left': 'right', 'right': 'left', 'clockwise': 'counterclockwise',
              'counterclockwise': 'clockwise', 'counter-clockwise': 'clockwise',
              'anticlockwise': 'clockwise', 'anti-clockwise': 'clockwise'}


def swap_sides(text: str) -> str:
  """Exchanges left/right and clockwise/counterclockwise in one regex pass (for mirrored clips)."""

  def replace(match: re.Match) -> str:
    word = match.group(0)
    swapped = _SIDE_SWAP[word.lower()]
    if word.isupper():
      return swapped.upper()
    return swapped.capitalize() if word[0].isupper() else swapped

  return _SIDE_WORDS.sub(replace, text)


def _read_lines(path: pathlib.Path) -> list[str]:
  return [line.strip() for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]


def _load_raw(path: pathlib.Path) -> np.ndarray:
  if not path.is_file():
    raise FileNotFoundError(f'InterHuman motion file missing: {path}')
  try:
    raw = np.load(path)
  except ValueError as e:
    raise ValueError(f'{path}: not a readable .npy array ({e}).') from e
  if raw.ndim != 2 or raw.shape[1] != 492 or not np.all(np.isfinite(raw)):
    raise ValueError(f'{path}: expected a finite float array of shape (T, 492), found '
                     f'shape {raw.shape}{"" if np.all(np.isfinite(raw)) else " with NaN/Inf"}.')
  return raw


def check_layout(root: pathlib.Path) -> None:
  """Raises a FileNotFoundError naming the first missing part of the InterHuman layout."""
  required = [root / 'annots', root / 'motions_processed' / 'person1',
              root / 'motions_processed' / 'person2'] + [root / 'split' / f'{s}.txt' for s in SPLITS]
  for path in required:
    if not path.exists():
      raise FileNotFoundError(
          f'{path} not found: the manual directory {root} must hold InterHuman\'s official '
          'layout (annots/, motions_processed/person1|person2/, split/{train,val,test}.txt).')


class InterHuman(tfds.core.GeneratorBasedBuilder):
  """InterHuman two-person motions with captions and per-person texts."""

  name = 'interhuman'
  VERSION = tfds.core.Version('0.1.0')
  RELEASE_NOTES = {'0.1.0': 'Used raw columns in the y-up world frame, mirrored training copies.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Request InterHuman from its authors, unpack it, and pass the folder that holds annots/, '
      'motions_processed/ and split/ as the manual directory.')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'clip_id': tfds.features.Text(),
            # [T, 2, 192]: per person 22x3 positions then 21x6 local rotations, y-up, metres.
            'motion': tfds.features.Tensor(shape=(None, 2, features_lib.USED_DIM), dtype=np.float32),
            'num_frames': np.int32,
            'captions': tfds.features.Sequence(tfds.features.Text()),
            'person1_texts': tfds.features.Sequence(tfds.features.Text()),
            'person2_texts': tfds.features.Sequence(tfds.features.Text()),
            'person_text_source': tfds.features.Sequence(tfds.features.Text()),
            'mirrored': np.bool_,
        }),
        supervised_keys=None,
        homepage='https://tr3e.github.io/intergen-page/',
    )

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    check_layout(root)
    ignore_path = root / 'split' / 'ignore_list.txt'
    ignored = set(_read_lines(ignore_path)) if ignore_path.exists() else set()
    return {split: self._generate_examples(root, split, ignored) for split in SPLITS}

  def _generate_examples(self, root: pathlib.Path, split: str, ignored: set[str]):
    stats = {'clips': 0, 'short': 0, 'rule_texts': 0, 'ignored': 0}
    split_file = root / 'split' / f'{split}.txt'
    for clip_id in _read_lines(split_file):
      if clip_id in ignored:
        stats['ignored'] += 1
        continue
      example = _read_clip(root, clip_id)
      if example is None:
        stats['short'] += 1
        continue
      stats['clips'] += 1
      stats['rule_texts'] += example['person_text_source'].count(TEXT_SOURCE_RULE)
      yield clip_id, example
      if split == 'train':
        yield f'{clip_id}_mirror', _mirror_example(example)
    if not stats['clips']:
      raise ValueError(f'{split_file}: no usable clip ({stats["ignored"]} ignored, '
                       f'{stats["short"]} shorter than {MIN_FRAMES} frames); every split needs one.')
    logging.info('InterHuman %s: %d clips (and as many mirrored copies for train), %d shorter than '
                 '%d frames dropped, %d captions with rule-based per-person texts.', split,
                 stats['clips'], stats['short'], MIN_FRAMES, stats['rule_texts'])


def _read_clip(root: pathlib.Path, clip_id: str) -> dict | None:
  """Reads one clip into an example dict (None if it is too short to use)."""
  raws = [_load_raw(root / 'motions_processed' / f'person{p}' / f'{clip_id}.npy') for p in (1, 2)]
  if raws[0].shape[0] != raws[1].shape[0]:
    raise ValueError(f'clip {clip_id}: person1 has {raws[0].shape[0]} frames and person2 has '
                     f'{raws[1].shape[0]}; both files must have the same length.')
  if raws[0].shape[0] < MIN_FRAMES:
    return None
  used = [features_lib.raw_to_used(raw) for raw in raws]
  motion = np.stack([np.concatenate([pos.reshape(-1, 66), rot.reshape(-1, 126)], axis=-1)
                     for pos, rot in used], axis=1).astype(np.float32)
  annot_path = root / 'annots' / f'{clip_id}.txt'
  if not annot_path.is_file():
    raise FileNotFoundError(f'clip {clip_id}: caption file missing: {annot_path}')
  captions = _read_lines(annot_path)
  if not captions:
    raise ValueError(f'{annot_path}: no captions (expected one caption per line).')
  individual = []
  for p in (1, 2):
    path = root / 'annots_individual' / f'person{p}' / f'{clip_id}.txt'
    individual.append(_read_lines(path) if path.is_file() else [])
  person_texts = ([], [])
  sources = []
  for i, caption in enumerate(captions):
    if i < len(individual[0]) and i < len(individual[1]):
      texts, source = (individual[0][i], individual[1][i]), TEXT_SOURCE_FILE
    else:
      texts, source = decompose.rule_based_split(caption), TEXT_SOURCE_RULE
    person_texts[0].append(texts[0])
    person_texts[1].append(texts[1])
    sources.append(source)
  return {'clip_id': clip_id, 'motion': motion, 'num_frames': motion.shape[0],
          'captions': captions, 'person1_texts': person_texts[0], 'person2_texts': person_texts[1],
          'person_text_source': sources, 'mirrored': False}


def _mirror_example(example: dict) -> dict:
  motion = example['motion'].astype(np.float64)
  positions = motion[..., :66].reshape(*motion.shape[:2], 22, 3)
  rotations = motion[..., 66:].reshape(*motion.shape[:2], 21, 6)
  positions, rotations = features_lib.mirror_used(positions, rotations)
  mirrored = np.concatenate([positions.reshape(*motion.shape[:2], 66),
                             rotations.reshape(*motion.shape[:2], 126)], axis=-1)
  return dict(example, clip_id=example['clip_id'] + '_mirror', motion=mirrored.astype(np.float32),
              captions=[swap_sides(t) for t in example['captions']],
              person1_texts=[swap_sides(t) for t in example['person1_texts']],
              person2_texts=[swap_sides(t) for t in example['person2_texts']], mirrored=True)


def build(manual_dir: str | pathlib.Path, data_dir: str | pathlib.Path) -> pathlib.Path:
  """Converts the InterHuman folder ``manual_dir`` into TFDS under ``data_dir``; returns its path."""
  tfds.disable_progress_bar()  # Its carriage-return bars garble logs; we print the result.
  builder = InterHuman(data_dir=str(data_dir), file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return pathlib.Path(builder.data_dir)
