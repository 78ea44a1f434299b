"""TFDS builder for InterHuman's official on-disk layout (DESIGN §1.2), written as array_record.

The user's download is the manual directory::

    ROOT/annots/<id>.txt, ROOT/motions_processed/person{1,2}/<id>.npy,
    ROOT/split/{train,val,test}.txt, ROOT/split/ignore_list.txt,
    ROOT/annots_individual/person{1,2}/<id>.txt   (optional per-person texts, in2IN's layout)

Each example keeps both persons' used raw columns (body positions and local 6D rotations) in
the y-up world frame, uncropped: cropping and canonicalisation happen at read time so that the
canonical frame follows the crop. Every training clip also appears mirrored.

Per-person texts come, per caption, from the first of: decomposition JSONL files
(``finedual_jax.data.decompositions``), ``annots_individual/``, the rule-based split.

Bad input is either a clear error naming the file and the problem (``on_error='strict'``, the
default) or a skip recorded in the build report (``on_error='skip'``), which ``build`` writes as
``build_report.json`` beside the records and summarises. Clips shorter than 15 frames are
skipped (and recorded) in both modes, as the reference loader drops them. ``build`` works in a
staging folder and moves the finished data set into place, so a failed build leaves nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import pathlib
import re
from typing import Callable, Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import staging
from finedual_jax.data import decompose
from finedual_jax.data import decompositions as decompositions_lib
from finedual_jax.data.text_files import read_lines
from finedual_jax.motion import features as features_lib

MIN_FRAMES = 15  # Shorter clips are dropped, as the reference loader does.
SPLITS = ('train', 'val', 'test')
ON_ERROR = ('strict', 'skip')
REPORT_FILE = 'build_report.json'
TEXT_SOURCE_JSONL, TEXT_SOURCE_FILE, TEXT_SOURCE_RULE = 'jsonl', 'file', 'rule'

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


class ClipProblem(ValueError):
  """One clip cannot be used: the message names the file and says what is wrong."""

  def __init__(self, clip_id: str, path: pathlib.Path, reason: str):
    super().__init__(f'{path}: {reason}')
    self.clip_id, self.path, self.reason = clip_id, path, reason


class TooShort(ClipProblem):
  """A clip under MIN_FRAMES: skipped (and recorded) in both modes, as the reference does."""


def load_raw(path: pathlib.Path, clip_id: str = '') -> np.ndarray:
  """One person's raw (T, 492) motion; a ClipProblem says why a file cannot be used."""
  if not path.is_file():
    raise ClipProblem(clip_id, path, 'motion file missing (the id is in a split file).')
  try:
    raw = np.load(path, allow_pickle=False)
  except (ValueError, EOFError, OSError) as e:
    raise ClipProblem(clip_id, path, f'not a readable .npy array ({e}).') from None
  if not isinstance(raw, np.ndarray) or not np.issubdtype(raw.dtype, np.number):
    raise ClipProblem(clip_id, path, f'expected a numeric array, found {type(raw).__name__} '
                      f'of {getattr(raw, "dtype", "?")}.')
  if raw.ndim != 2 or raw.shape[1] != 492:
    raise ClipProblem(clip_id, path, f'expected shape (T, 492), found {raw.shape}.')
  bad = ~np.all(np.isfinite(raw), axis=1)
  if np.any(bad):
    raise ClipProblem(clip_id, path, f'{int(bad.sum())} frame(s) with NaN/Inf, the first at '
                      f'frame {int(np.argmax(bad))}.')
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


def clip_features(motion_dim: int) -> tfds.features.FeaturesDict:
  """What every builder stores per clip (InterHuman's and Inter-X's read the same way)."""
  return tfds.features.FeaturesDict({
      'clip_id': tfds.features.Text(),
      'motion': tfds.features.Tensor(shape=(None, 2, motion_dim), dtype=np.float32),
      'num_frames': np.int32,
      'captions': tfds.features.Sequence(tfds.features.Text()),
      'person1_texts': tfds.features.Sequence(tfds.features.Text()),
      'person2_texts': tfds.features.Sequence(tfds.features.Text()),
      'person_text_source': tfds.features.Sequence(tfds.features.Text()),
      'mirrored': np.bool_,
  })


@dataclasses.dataclass
class BuildReport:
  """What a build kept, skipped and where its per-person texts came from."""
  on_error: str
  splits: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
  skipped: list[dict] = dataclasses.field(default_factory=list)
  text_sources: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  decomposition_files: list[str] = dataclasses.field(default_factory=list)

  def skip(self, reason: str, *, clip_id: str = '', path: pathlib.Path | str = '',
           split: str = '', **extra) -> None:
    self.skipped.append({'id': clip_id, 'split': split, 'file': str(path), 'reason': reason,
                         **extra})

  def to_dict(self) -> dict:
    return {'on_error': self.on_error, 'splits': self.splits, 'skipped': self.skipped,
            'text_sources': dict(self.text_sources),
            'decomposition_files': self.decomposition_files}

  def summary(self) -> str:
    kept = ', '.join(f'{s} {c["clips"]}' + (f' (+{c["mirrored"]} mirrored)' if c['mirrored'] else '')
                     for s, c in self.splits.items())
    reasons = collections.Counter(_reason_kind(s['reason']) for s in self.skipped)
    lines = [f'clips kept: {kept}.',
             'per-person texts: ' + ', '.join(f'{n} from {source}' for source, n in
                                              sorted(self.text_sources.items())) + '.']
    if self.skipped:
      lines.append(f'skipped {len(self.skipped)}: ' +
                   '; '.join(f'{n} {kind}' for kind, n in reasons.most_common()) + '.')
    return '\n'.join(lines)


def _reason_kind(reason: str) -> str:
  """A short family name for a skip reason, for the summary."""
  return reason.split(':')[0].split('(')[0].strip().rstrip('.')


class _PersonTexts:
  """Resolves the per-person texts of one clip's captions from the configured sources."""

  def __init__(self, root: pathlib.Path, records: Sequence[decompositions_lib.Decomposition],
               strict: bool, report: BuildReport):
    self.root, self.strict, self.report = root, strict, report
    self.records = {r.key: r for r in records}

  def __call__(self, clip_id: str, captions: list[str]):
    individual = []
    for p in (1, 2):
      path = self.root / 'annots_individual' / f'person{p}' / f'{clip_id}.txt'
      try:
        individual.append(read_lines(path) if path.is_file() else [])
      except ValueError as e:
        raise ClipProblem(clip_id, path, str(e).split(': ', 1)[1]) from None
    person1, person2, sources = [], [], []
    for i, caption in enumerate(captions):
      record = self.records.get((clip_id, i))
      if record is not None and ' '.join(caption.split()) != record.overall:
        self._problem(record, f'its overall text {record.overall!r} is not caption {i} of the '
                      f'clip ({caption!r}); was it made from another version of annots/?')
        record = None
      if record is not None:
        texts, source = (record.person1, record.person2), TEXT_SOURCE_JSONL
      elif i < len(individual[0]) and i < len(individual[1]):
        texts, source = (individual[0][i], individual[1][i]), TEXT_SOURCE_FILE
      else:
        texts, source = decompose.rule_based_split(caption), TEXT_SOURCE_RULE
      person1.append(texts[0])
      person2.append(texts[1])
      sources.append(source)
    for index in sorted(i for c, i in self.records if c == clip_id and i >= len(captions)):
      self._problem(self.records[(clip_id, index)],
                    f'caption index {index} but the clip has {len(captions)} caption(s)')
    return person1, person2, sources

  def _problem(self, record: decompositions_lib.Decomposition, reason: str) -> None:
    where = f'decomposition for clip {record.clip_id!r} caption {record.caption_index}'
    if self.strict:
      raise ValueError(f'{where}: {reason}.')
    self.report.skip(f'decomposition not used: {reason}', clip_id=record.clip_id,
                     caption_index=record.caption_index)


class InterHuman(tfds.core.GeneratorBasedBuilder):
  """InterHuman two-person motions with captions and per-person texts."""

  name = 'interhuman'
  VERSION = tfds.core.Version('0.1.0')
  RELEASE_NOTES = {'0.1.0': 'Used raw columns in the y-up world frame, mirrored training copies.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Request InterHuman from its authors, unpack it, and pass the folder that holds annots/, '
      'motions_processed/ and split/ as the manual directory.')

  def __init__(self, *, on_error: str = 'strict',
               decomposition_files: Sequence[str | pathlib.Path] = (), **kwargs):
    if on_error not in ON_ERROR:
      raise ValueError(f'on_error: expected one of {ON_ERROR}, found {on_error!r}.')
    super().__init__(**kwargs)
    self.report = BuildReport(on_error=on_error,
                              decomposition_files=[str(f) for f in decomposition_files])

  @property
  def strict(self) -> bool:
    return self.report.on_error == 'strict'

  def _info(self) -> tfds.core.DatasetInfo:
    # motion [T, 2, 192]: per person 22x3 positions then 21x6 local rotations, y-up, metres.
    return self.dataset_info_from_configs(features=clip_features(features_lib.USED_DIM),
                                          supervised_keys=None,
                                          homepage='https://tr3e.github.io/intergen-page/')

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    check_layout(root)
    ignore_path = root / 'split' / 'ignore_list.txt'
    ignored = set(read_lines(ignore_path)) if ignore_path.exists() else set()
    split_ids = self._split_ids(root)
    records = self._decompositions(set().union(*split_ids.values()) | ignored)
    texts = _PersonTexts(root, records, self.strict, self.report)
    return {split: self._generate_examples(root, split, split_ids[split], ignored, texts)
            for split in SPLITS}

  def _problem(self, message: str, **where) -> None:
    """Raises in strict mode; records a skip otherwise."""
    if self.strict:
      raise ValueError(message)
    self.report.skip(message, **where)

  def _split_ids(self, root: pathlib.Path) -> dict[str, list[str]]:
    """Ids per split file, each id once over all splits (a repeat is a problem)."""
    first_seen, split_ids = {}, {}
    for split in SPLITS:
      path = root / 'split' / f'{split}.txt'
      split_ids[split] = []
      for number, clip_id in enumerate(read_lines(path), start=1):
        if clip_id in first_seen:
          self._problem(f'{path}:{number}: duplicate id {clip_id!r} (first listed in '
                        f'{first_seen[clip_id]}); each clip belongs to one split once.',
                        clip_id=clip_id, path=path, split=split)
          continue
        first_seen[clip_id] = f'{path.name} line {number}'
        split_ids[split].append(clip_id)
    return split_ids

  def _decompositions(self, known_ids: set[str]) -> list[decompositions_lib.Decomposition]:
    records = {}
    for path in self.report.decomposition_files:
      found, problems = decompositions_lib.read_jsonl(path, self.report.on_error)
      for problem in problems:
        self.report.skip(f'decomposition line not used: {problem["reason"]}', path=path,
                         line=problem['line'])
      for record in found:
        if record.clip_id not in known_ids:
          self._problem(f'{path}: decomposition for unknown clip id {record.clip_id!r} (in no '
                        'split file of the manual directory).', clip_id=record.clip_id,
                        path=path)
        elif record.key in records:
          self._problem(f'{path}: clip {record.clip_id!r} caption {record.caption_index} is '
                        'also decomposed in an earlier file.', clip_id=record.clip_id, path=path)
        else:
          records[record.key] = record
    return list(records.values())

  def _generate_examples(self, root: pathlib.Path, split: str, clip_ids: list[str],
                         ignored: set[str], texts: _PersonTexts):
    counts = self.report.splits.setdefault(
        split, {'listed': len(clip_ids), 'clips': 0, 'mirrored': 0, 'ignored': 0, 'skipped': 0})
    for clip_id in clip_ids:
      if clip_id in ignored:
        counts['ignored'] += 1
        continue
      try:
        example = _read_clip(root, clip_id, texts)
      except ClipProblem as e:
        if self.strict and not isinstance(e, TooShort):
          raise ValueError(f'clip {clip_id}: {e}') from None
        counts['skipped'] += 1
        self.report.skip(e.reason, clip_id=clip_id, path=e.path, split=split)
        continue
      except ValueError as e:  # Caption files and decompositions (strict mode only).
        raise ValueError(f'clip {clip_id}: {e}') from None
      counts['clips'] += 1
      self.report.text_sources.update(example['person_text_source'])
      yield clip_id, example
      if split == 'train':
        counts['mirrored'] += 1
        yield f'{clip_id}_mirror', _mirror_example(example)
    if not counts['clips']:
      raise ValueError(f'{root / "split" / f"{split}.txt"}: no usable clip ({counts["ignored"]} '
                       f'ignored, {counts["skipped"]} skipped); every split needs one.')
    logging.info('InterHuman %s: %s', split, counts)


def _read_clip(root: pathlib.Path, clip_id: str, texts: _PersonTexts) -> dict:
  """Reads one clip into an example dict; a ClipProblem says why it cannot be used."""
  paths = [root / 'motions_processed' / f'person{p}' / f'{clip_id}.npy' for p in (1, 2)]
  raws = [load_raw(path, clip_id) for path in paths]
  if raws[0].shape[0] != raws[1].shape[0]:
    raise ClipProblem(clip_id, paths[1], f'person2 has {raws[1].shape[0]} frames and person1 '
                      f'has {raws[0].shape[0]}; both files must have the same length.')
  if raws[0].shape[0] < MIN_FRAMES:
    raise TooShort(clip_id, paths[0], f'shorter than {MIN_FRAMES} frames '
                      f'({raws[0].shape[0]}).')
  annot_path = root / 'annots' / f'{clip_id}.txt'
  if not annot_path.is_file():
    raise ClipProblem(clip_id, annot_path, 'caption file missing.')
  try:
    captions = read_lines(annot_path)
  except ValueError as e:
    raise ClipProblem(clip_id, annot_path, str(e).split(': ', 1)[1]) from None
  if not captions:
    raise ClipProblem(clip_id, annot_path, 'no captions (expected one caption per line).')
  person1, person2, sources = texts(clip_id, captions)
  used = [features_lib.raw_to_used(raw) for raw in raws]
  motion = np.stack([np.concatenate([pos.reshape(-1, 66), rot.reshape(-1, 126)], axis=-1)
                     for pos, rot in used], axis=1).astype(np.float32)
  return {'clip_id': clip_id, 'motion': motion, 'num_frames': motion.shape[0],
          'captions': captions, 'person1_texts': person1, 'person2_texts': person2,
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


def build(manual_dir: str | pathlib.Path, data_dir: str | pathlib.Path, *,
          on_error: str = 'strict', decomposition_files: Iterable[str | pathlib.Path] = (),
          finalize: Callable[[pathlib.Path], None] | None = None) -> pathlib.Path:
  """Converts the InterHuman folder ``manual_dir`` into TFDS under ``data_dir``; returns its path.

  The records, ``build_report.json`` and whatever ``finalize(staged_dir)`` adds (statistics,
  tokenizer) appear together or not at all (``staging.build_staged``).
  """
  report = []

  def finish(builder: InterHuman, staged: pathlib.Path) -> None:
    report.append(builder.report)
    (staged / REPORT_FILE).write_text(json.dumps(builder.report.to_dict(), indent=1),
                                      encoding='utf-8')
    if finalize is not None:
      finalize(staged)

  target = staging.build_staged(
      lambda staging_dir: InterHuman(data_dir=staging_dir, file_format='array_record',
                                     on_error=on_error,
                                     decomposition_files=list(decomposition_files)),
      manual_dir, data_dir, finalize=finish)
  print(f'InterHuman build ({on_error}) -> {target}\n{report[0].summary()}\n'
        f'report: {target / REPORT_FILE}')
  return target
