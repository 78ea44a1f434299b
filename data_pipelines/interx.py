"""TFDS builder for Inter-X's processed release (DESIGN §1.3), written as array_record.

The manual directory gathers three parts of the user's download (folder names are arguments;
the defaults are those of the release)::

    ROOT/motions/{train,val,test}.h5  processed_data/motions: one dataset per clip id, float
                                      (T, 56, 6) axis-angle at 30 fps, y-up (SMPL-X's frame)
    ROOT/texts/<id>.txt               Inter-X_Dataset/texts.zip: captions, one per line (3 each);
                                      processed_data/texts_processed works too (texts_dir=...):
                                      everything from the first '#' of a line on is dropped
    ROOT/splits/{train,val,test}.txt  Inter-X_Dataset/splits (also in the Inter-X GitHub
                                      repository's datasets/ folder): one clip id per line

Rows of a frame: global orient, 21 body joints, jaw, 2 eyes, 30 hand joints, translation (row
55); person 1 in channels 0:3, person 2 in 3:6. Two configs:

* ``rotations`` stores ``motion`` [T, 2, 135] (``rotation_features``): needs no body model,
  but position-based losses cannot be used with it;
* ``positions`` stores InterHuman's used layout [T, 2, 192] (22 joint positions y-up, then 21
  local 6D rotations), so the 262-d features and every loss apply. Joint positions need the
  licensed SMPL-X model, which the user supplies: ``Interx(config='positions',
  smplx_model='/path/SMPLX_NEUTRAL.npz')``. Betas are zero, as in Inter-X's own processing.

Heights: the release puts each person's lowest joint on y = 0 and then subtracts person 1's
frame-0 translation (all three axes) from both persons (its preprocess/1_prepare_data.py), so the
stored floor is not at y = 0. The ``positions`` path re-floors each person at read time (§1.1);
in the ``rotations`` path person 1's root height is 0 at frame 0 of the uncropped clip.

Clips are stored uncropped and unmirrored (``mirrored`` is False); canonicalisation happens at
read time so that the canonical frame follows the crop. Per-person texts come from the
rule-based split (``decompose.rule_based_split``).
"""

from __future__ import annotations

import collections
import logging
import pathlib
from typing import Callable

import h5py
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import interhuman
from data_pipelines import staging
from finedual_jax.data import decompose
from finedual_jax.data.text_files import read_lines
from finedual_jax.motion import features as features_lib
from finedual_jax.motion import rotation_features
from finedual_jax.motion import skeleton
from finedual_jax.motion import smplx

MIN_FRAMES = 15  # Shorter clips are skipped, as for InterHuman.
SPLITS = ('train', 'val', 'test')
TEXT_SOURCE_RULE = 'rule'
ROTATIONS, POSITIONS = 'rotations', 'positions'
DEFAULT_LAYOUT = {'motions_dir': 'motions', 'texts_dir': 'texts', 'splits_dir': 'splits'}

_POSITION_LOSSES = ('velocity, bone length, foot contact, distance map, joint affinity, relative '
                    'orientation, distance regression')
_NO_MODEL = (
    "The 'positions' config of interx needs the SMPL-X body model file (e.g. SMPLX_NEUTRAL.npz "
    'from https://smpl-x.is.tue.mpg.de/, which you must download yourself after registering) to '
    "compute joint positions: pass smplx_model='/path/to/SMPLX_NEUTRAL.npz'. The 'rotations' "
    'config works without it, with the position losses (' + _POSITION_LOSSES + ') switched off.')


def check_layout(root: pathlib.Path, *, motions_dir: str = 'motions', texts_dir: str = 'texts',
                 splits_dir: str = 'splits') -> None:
  """Raises a FileNotFoundError naming the first missing part of the Inter-X layout."""
  required = ([root / motions_dir / f'{s}.h5' for s in SPLITS] + [root / texts_dir]
              + [root / splits_dir / f'{s}.txt' for s in SPLITS])
  for path in required:
    if not path.exists():
      raise FileNotFoundError(
          f'{path} not found: the manual directory {root} must hold {motions_dir}/'
          f'{{train,val,test}}.h5 (processed_data/motions of the Inter-X release), {texts_dir}/ '
          f'(captions, <id>.txt) and {splits_dir}/{{train,val,test}}.txt (Inter-X_Dataset/splits). '
          'Folder names other than these are builder arguments (motions_dir, texts_dir, '
          'splits_dir).')


def read_captions(path: pathlib.Path) -> list[str]:
  """Captions of one clip, one per line; ``texts_processed`` lines keep the part before '#'."""
  if not path.is_file():
    raise FileNotFoundError(f'caption file missing: {path}')
  captions = [c for c in (line.split('#', 1)[0].strip() for line in read_lines(path)) if c]
  if not captions:
    raise ValueError(f'{path}: no captions (expected one caption per line).')
  return captions


def _read_clip(motions: h5py.File, clip_id: str) -> np.ndarray:
  """One clip's (T, 56, 6) float64 array, checked."""
  source = motions.filename
  if clip_id not in motions:
    raise ValueError(f'{source}: clip {clip_id!r} is listed in the split file but has no motion '
                     'in this file; check that the split lists and the .h5 files belong together.')
  node = motions[clip_id]
  if not isinstance(node, h5py.Dataset):
    raise ValueError(f'{source}: {clip_id!r} is a group, expected a (T, 56, 6) dataset.')
  expected = (rotation_features.INTERX_NUM_ROWS, 6)
  if node.ndim != 3 or node.shape[1:] != expected:
    raise ValueError(f'{source}: clip {clip_id!r} has shape {node.shape}, expected (T, '
                     f'{expected[0]}, {expected[1]}) axis-angle rows.')
  motion = np.asarray(node[()], dtype=np.float64)
  if not np.all(np.isfinite(motion)):
    raise ValueError(f'{source}: clip {clip_id!r} contains NaN or Inf.')
  return motion


def used_motion(motion: np.ndarray, body_model: smplx.BodyModel, *,
                up_axis: str = 'y') -> np.ndarray:
  """One Inter-X clip (T, 56, 6) -> InterHuman's used layout (T, 2, 192) float32, y-up."""
  stored = rotation_features.interx_motion_to_stored(motion, up_axis=up_axis)
  per_person = []
  for p in (0, 1):
    rows = motion[..., 3 * p:3 * p + 3]
    axis_angle = rows[:, :skeleton.NUM_JOINTS]
    positions = body_model.joint_positions(axis_angle,
                                           rows[:, rotation_features.INTERX_TRANSLATION])
    if up_axis == 'z':
      positions = positions @ skeleton.Z_UP_TO_Y_UP.T
    local = stored[:, p, rotation_features.STORED_LOCAL_ROTATIONS]
    per_person.append(np.concatenate([positions.reshape(-1, 66), local], axis=-1))
  return np.stack(per_person, axis=1).astype(np.float32)


class Interx(tfds.core.GeneratorBasedBuilder):
  """Inter-X two-person motions with captions and rule-based per-person texts."""

  name = 'interx'
  VERSION = tfds.core.Version('0.1.0')
  RELEASE_NOTES = {'0.1.0': 'Rotation-based and SMPL-X joint-position configs, y-up, uncropped.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name=ROTATIONS,
          description='motion [T, 2, 135]: root translation, global orient 6D, 21 local 6D '
                      '(no SMPL-X model needed; position losses off).'),
      tfds.core.BuilderConfig(
          name=POSITIONS,
          description='motion [T, 2, 192]: 22 SMPL-X joint positions (y-up) then 21 local 6D, '
                      "InterHuman's used layout (needs the user's SMPL-X model file)."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Request Inter-X from its authors (https://github.com/liangxuy/Inter-X), then make one '
      'folder holding motions/{train,val,test}.h5 (processed_data/motions), texts/<id>.txt '
      '(texts.zip) and splits/{train,val,test}.txt, and pass it as the manual directory.')

  def __init__(self, *, smplx_model: str | pathlib.Path | None = None,
               motions_dir: str = DEFAULT_LAYOUT['motions_dir'],
               texts_dir: str = DEFAULT_LAYOUT['texts_dir'],
               splits_dir: str = DEFAULT_LAYOUT['splits_dir'], up_axis: str = 'y', **kwargs):
    """As any TFDS builder, plus the SMPL-X model file (``positions`` only) and the layout.

    Args:
      smplx_model: the user's SMPL-X model file; required by, and only used by, ``positions``.
      motions_dir, texts_dir, splits_dir: folder names inside the manual directory.
      up_axis: up axis of the .h5 data: 'y' (the processed release) or 'z'.
      **kwargs: ``tfds.core.GeneratorBasedBuilder`` arguments (data_dir, config, file_format).
    """
    if up_axis not in rotation_features.UP_AXES:
      raise ValueError(f'up_axis: expected one of {rotation_features.UP_AXES}, found {up_axis!r}.')
    super().__init__(**kwargs)
    self._layout = {'motions_dir': motions_dir, 'texts_dir': texts_dir, 'splits_dir': splits_dir}
    self._up_axis = up_axis
    self._body_model = None
    if self.builder_config.name == POSITIONS:
      if smplx_model is None:
        raise ValueError(_NO_MODEL)
      self._body_model = smplx.load_body_model(smplx_model)
    elif smplx_model is not None:
      raise ValueError(f"smplx_model={str(smplx_model)!r} is only used by the 'positions' config, "
                       f"but the config is {self.builder_config.name!r}; pass config='positions' "
                       '(build() picks it for you).')

  def _info(self) -> tfds.core.DatasetInfo:
    if self.builder_config.name == POSITIONS:
      # Per person 22x3 joint positions then 21x6 local rotations, y-up, metres.
      dim = features_lib.USED_DIM
    else:
      # Per person root translation, global orient 6D, 21x6 local rotations, y-up, metres.
      dim = rotation_features.STORED_DIM
    return self.dataset_info_from_configs(features=interhuman.clip_features(dim),
                                          supervised_keys=None,
                                          homepage='https://liangxuy.github.io/inter-x/')

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    check_layout(root, **self._layout)
    return {split: self._generate_examples(root, split) for split in SPLITS}

  def _generate_examples(self, root: pathlib.Path, split: str):
    stats = {'clips': 0, 'short': 0, 'rule_texts': 0}
    split_file = root / self._layout['splits_dir'] / f'{split}.txt'
    motion_file = root / self._layout['motions_dir'] / f'{split}.h5'
    clip_ids = read_lines(split_file)
    duplicates = sorted(c for c, n in collections.Counter(clip_ids).items() if n > 1)
    if duplicates:
      raise ValueError(f'{split_file}: clip ids listed more than once: {duplicates[:5]}.')
    try:
      motions = h5py.File(motion_file, 'r')
    except OSError as e:
      raise ValueError(f'{motion_file}: not a readable HDF5 file ({e}).') from e
    with motions:
      for clip_id in clip_ids:
        motion = _read_clip(motions, clip_id)
        if motion.shape[0] < MIN_FRAMES:
          stats['short'] += 1
          continue
        example = self._example(root, clip_id, motion)
        stats['clips'] += 1
        stats['rule_texts'] += len(example['captions'])
        yield clip_id, example
    if not stats['clips']:
      raise ValueError(f'{split_file}: no usable clip ({stats["short"]} shorter than {MIN_FRAMES} '
                       'frames); every split needs one.')
    logging.info('Inter-X %s (%s): %d clips, %d shorter than %d frames skipped, %d captions with '
                 'rule-based per-person texts.', split, self.builder_config.name, stats['clips'],
                 stats['short'], MIN_FRAMES, stats['rule_texts'])

  def _example(self, root: pathlib.Path, clip_id: str, motion: np.ndarray) -> dict:
    if self._body_model is not None:
      stored = used_motion(motion, self._body_model, up_axis=self._up_axis)
    else:
      stored = rotation_features.interx_motion_to_stored(
          motion, up_axis=self._up_axis).astype(np.float32)
    captions = read_captions(root / self._layout['texts_dir'] / f'{clip_id}.txt')
    person_texts = [decompose.rule_based_split(c) for c in captions]
    return {'clip_id': clip_id, 'motion': stored, 'num_frames': stored.shape[0],
            'captions': captions, 'person1_texts': [t[0] for t in person_texts],
            'person2_texts': [t[1] for t in person_texts],
            'person_text_source': [TEXT_SOURCE_RULE] * len(captions), 'mirrored': False}


def dataset_subdir(smplx_model: str | pathlib.Path | None) -> pathlib.Path:
  """Where ``build`` puts the data set inside ``data_dir`` (name/config/version)."""
  config = POSITIONS if smplx_model is not None else ROTATIONS
  return pathlib.Path(Interx.name) / config / str(Interx.VERSION)


def build(manual_dir: str | pathlib.Path, data_dir: str | pathlib.Path, *,
          smplx_model: str | pathlib.Path | None = None, up_axis: str = 'y',
          finalize: Callable[[pathlib.Path], None] | None = None, **layout: str) -> pathlib.Path:
  """Converts the Inter-X folder ``manual_dir`` into TFDS under ``data_dir``; returns its path.

  The config follows ``smplx_model``: ``positions`` with a model file, else ``rotations``.
  ``layout`` may rename the folders (motions_dir, texts_dir, splits_dir). The records and what
  ``finalize(staged_dir)`` adds appear together or not at all (``staging.build_staged``).
  """
  config = POSITIONS if smplx_model is not None else ROTATIONS
  if config == ROTATIONS:
    logging.warning('Inter-X without an SMPL-X model: rotation representation; these losses '
                    'are off in training: %s.', _POSITION_LOSSES)
  return staging.build_staged(
      lambda staging_dir: Interx(data_dir=staging_dir, config=config,
                                 file_format='array_record', smplx_model=smplx_model,
                                 up_axis=up_axis, **layout),
      manual_dir, data_dir,
      finalize=None if finalize is None else lambda builder, staged: finalize(staged))
