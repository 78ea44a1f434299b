"""Tests for the grain input pipeline on the synthetic set: batch contract, masks, determinism,
eval-mode content, the two person swaps, and the errors for bad statistics and bad folders."""

from __future__ import annotations

import itertools
import pathlib
import pickle
import shutil
import sys

import ml_collections
import numpy as np
import pytest

from finedual_jax.data import batch as batch_lib
from finedual_jax.data import pipeline
from finedual_jax.data import representation
from finedual_jax.motion import features as features_lib

_BATCH = 4
_MAX_LEN = 150  # Between the synthetic clip lengths, so both padding and cropping happen.
_TEXT_LEN = 48


@pytest.fixture(scope='module')
def train_source(dataset_dir):
  return pipeline.data_source(dataset_dir, 'train')


def _loader(dataset_dir, artifacts, *, split='train', train=True, seed=0, **kwargs):
  kwargs.setdefault('batch_size', _BATCH)
  return pipeline.make_loader(dataset_dir, split, artifacts, max_len=_MAX_LEN,
                              max_text_len=_TEXT_LEN, train=train, seed=seed, **kwargs)


def _take(loader, n):
  return list(itertools.islice(iter(loader), n))


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _normalised_text(text: str) -> str:
  return ' '.join(text.split()).lower()


def _expected_motion(artifacts, positions, rotations) -> np.ndarray:
  """[max_len, 2, 262] normalised, zero-padded canonical features of a (cropped) pair."""
  feats = features_lib.canonical_pair_features(positions, rotations)
  out = np.zeros((_MAX_LEN, 2, features_lib.FEATURE_DIM), np.float32)
  out[:feats.shape[1]] = (feats.transpose(1, 0, 2) - artifacts.mean) / artifacts.std
  return out


def test_lengths_straddle_max_len(train_source):
  # Precondition of the mask tests: some clips are padded and some are cropped.
  rows = [train_source[i]['num_frames'] - 1 for i in range(len(train_source))]
  assert min(rows) < _MAX_LEN < max(rows)


def test_train_batches_obey_the_contract_and_masks(dataset_dir, artifacts, train_source):
  allowed = {min(train_source[i]['num_frames'] - 1, _MAX_LEN) for i in range(len(train_source))}
  for batch in _take(_loader(dataset_dir, artifacts), 3):
    batch_lib.check(batch, _BATCH, _MAX_LEN, _TEXT_LEN)
    mask, motion = batch[batch_lib.MASK], batch[batch_lib.MOTION]
    for row_mask in mask:
      rows = int(row_mask.sum())
      assert rows in allowed
      np.testing.assert_array_equal(row_mask, np.arange(_MAX_LEN) < rows)  # A prefix of ones.
    assert np.all(motion[mask == 0] == 0)
    assert np.all(np.any(motion[mask == 1] != 0, axis=-1))
    tokens = batch[batch_lib.TEXT_TOKENS]
    assert np.all(tokens[:, 0] == 2) and np.all(batch[batch_lib.PERSON_TOKENS][..., 0] == 2)


def test_eval_masks_are_min_of_rows_and_max_len_in_record_order(dataset_dir, artifacts,
                                                                 train_source):
  batches = _take(_loader(dataset_dir, artifacts, train=False, num_epochs=1), 100)
  assert len(batches) == len(train_source) // _BATCH  # The remainder is dropped.
  rows = np.concatenate([b[batch_lib.MASK].sum(axis=1) for b in batches])
  expected = [min(train_source[i]['num_frames'] - 1, _MAX_LEN) for i in range(len(rows))]
  np.testing.assert_array_equal(rows, expected)


def test_same_seed_same_batches_different_seed_different(dataset_dir, artifacts):
  first = _take(_loader(dataset_dir, artifacts, seed=3), 3)
  again = _take(_loader(dataset_dir, artifacts, seed=3), 3)
  other = _take(_loader(dataset_dir, artifacts, seed=4), 3)
  for a, b in zip(first, again):
    for key in batch_lib.spec(1, 1, 1):
      np.testing.assert_array_equal(a[key], b[key])
  assert any(not np.array_equal(a[batch_lib.MOTION], c[batch_lib.MOTION])
             for a, c in zip(first, other))


def test_eval_mode_is_deterministic_caption_zero_and_no_crop_offset(dataset_dir, artifacts):
  split = 'val'
  source = pipeline.data_source(dataset_dir, split)
  loaders = [_loader(dataset_dir, artifacts, split=split, train=False, seed=s, batch_size=2,
                     num_epochs=1) for s in (0, 1)]
  batch, again = (_take(loader, 1)[0] for loader in loaders)
  for key in batch_lib.spec(1, 1, 1):
    np.testing.assert_array_equal(batch[key], again[key])
  tok = artifacts.tokenizer
  assert max(source[i]['num_frames'] for i in range(2)) > _MAX_LEN + 1  # One clip is cut.
  for i in range(2):
    element = source[i]
    positions, rotations = representation.split_positions_motion(element['motion'])
    window = slice(0, _MAX_LEN + 1)
    np.testing.assert_allclose(batch[batch_lib.MOTION][i],
                               _expected_motion(artifacts, positions[:, window], rotations[:, window]),
                               atol=1e-4)
    np.testing.assert_array_equal(batch[batch_lib.TEXT_TOKENS][i],
                                  tok.encode(_text(element['captions'][0]), _TEXT_LEN))
    np.testing.assert_array_equal(
        batch[batch_lib.PERSON_TOKENS][i],
        tok.encode([_text(element['person1_texts'][0]), _text(element['person2_texts'][0])],
                   _TEXT_LEN))


@pytest.fixture(scope='module')
def one_caption_element(train_source):
  """A stored clip that fits in max_len rows, with only its first caption (so nothing random
  remains but the swaps)."""
  for i in range(len(train_source)):
    element = dict(train_source[i])
    if element['num_frames'] - 1 <= _MAX_LEN:
      for key in ('captions', 'person1_texts', 'person2_texts'):
        element[key] = [element[key][0]]
      return element
  raise AssertionError('no clip short enough')


def _make_batch(artifacts, elements, before, after, seed=0, train=True):
  transform = pipeline.MakeBatch(artifacts, max_len=_MAX_LEN, max_text_len=_TEXT_LEN,
                                 train=train, swap_before_p=before, swap_after_p=after)
  return transform.random_map(elements, np.random.default_rng(seed))


def _make(artifacts, element, before, after, seed=0):
  """One example: a batch of one, without the batch axis."""
  return {k: v[0] for k, v in _make_batch(artifacts, [element], before, after, seed).items()}


def _decoded_persons(artifacts, example):
  return [artifacts.tokenizer.decode(row) for row in example[batch_lib.PERSON_TOKENS]]


def test_no_swap_gives_the_canonical_features(artifacts, one_caption_element):
  positions, rotations = representation.split_positions_motion(one_caption_element['motion'])
  example = _make(artifacts, one_caption_element, 0.0, 0.0)
  np.testing.assert_allclose(example[batch_lib.MOTION],
                             _expected_motion(artifacts, positions, rotations), atol=1e-4)
  assert _decoded_persons(artifacts, example) == [
      _normalised_text(_text(one_caption_element[k][0])) for k in ('person1_texts', 'person2_texts')]


def test_swap_before_canonicalises_in_the_new_person1_frame(artifacts, one_caption_element):
  positions, rotations = representation.split_positions_motion(one_caption_element['motion'])
  plain = _make(artifacts, one_caption_element, 0.0, 0.0)
  example = _make(artifacts, one_caption_element, 1.0, 0.0)
  np.testing.assert_allclose(example[batch_lib.MOTION],
                             _expected_motion(artifacts, positions[::-1], rotations[::-1]),
                             atol=1e-4)
  assert _decoded_persons(artifacts, example) == _decoded_persons(artifacts, plain)[::-1]
  np.testing.assert_array_equal(example[batch_lib.TEXT_TOKENS], plain[batch_lib.TEXT_TOKENS])
  np.testing.assert_array_equal(example[batch_lib.MASK], plain[batch_lib.MASK])


def test_swap_after_flips_the_person_axis_of_unswapped_features(artifacts, one_caption_element):
  positions, rotations = representation.split_positions_motion(one_caption_element['motion'])
  plain = _make(artifacts, one_caption_element, 0.0, 0.0)
  example = _make(artifacts, one_caption_element, 0.0, 1.0)
  np.testing.assert_allclose(example[batch_lib.MOTION],
                             _expected_motion(artifacts, positions, rotations)[:, ::-1], atol=1e-4)
  assert _decoded_persons(artifacts, example) == _decoded_persons(artifacts, plain)[::-1]
  # The two swaps are different augmentations: the canonical frame follows a different person.
  before = _make(artifacts, one_caption_element, 1.0, 0.0)
  assert not np.allclose(example[batch_lib.MOTION], before[batch_lib.MOTION], atol=1e-2)


def test_swapping_before_and_after_puts_person1_back_first_in_person2_frame(
    artifacts, one_caption_element):
  positions, rotations = representation.split_positions_motion(one_caption_element['motion'])
  plain = _make(artifacts, one_caption_element, 0.0, 0.0)
  both = _make(artifacts, one_caption_element, 1.0, 1.0)
  expected = _expected_motion(artifacts, positions[::-1], rotations[::-1])[:, ::-1]
  np.testing.assert_allclose(both[batch_lib.MOTION], expected, atol=1e-4)
  assert _decoded_persons(artifacts, both) == _decoded_persons(artifacts, plain)


def test_training_crop_has_max_len_rows_at_a_frame_aligned_start(artifacts, train_source):
  index = max(range(len(train_source)), key=lambda i: train_source[i]['num_frames'])
  element = dict(train_source[index])
  # Synthetic gaits are periodic; a quadratic drift of person 2 makes every window unique.
  motion = np.array(element['motion'], np.float32)
  num_frames = motion.shape[0]
  motion[:, 1, 0:66:3] += 1e-4 * np.arange(num_frames, dtype=np.float32)[:, None] ** 2
  element['motion'] = motion
  positions, rotations = representation.split_positions_motion(motion)
  assert num_frames > _MAX_LEN + 1
  starts = set()
  for seed in range(4):
    example = _make(artifacts, element, 0.0, 0.0, seed=seed)
    assert example[batch_lib.MASK].sum() == _MAX_LEN
    # The crop is one of the windows [s, s + max_len + 1): find it among all starts.
    matches = [s for s in range(num_frames - _MAX_LEN)
               if np.allclose(example[batch_lib.MOTION],
                              _expected_motion(artifacts, positions[:, s:s + _MAX_LEN + 1],
                                               rotations[:, s:s + _MAX_LEN + 1]), atol=1e-4)]
    assert len(matches) == 1, matches
    starts.add(matches[0])
  assert len(starts) > 1  # The start is random.


def _short_one_caption_elements(train_source, count):
  """``count`` clips of different lengths that fit in max_len rows, first caption only."""
  elements, lengths = [], set()
  for i in range(len(train_source)):
    element = dict(train_source[i])
    if element['num_frames'] - 1 <= _MAX_LEN and element['num_frames'] not in lengths:
      lengths.add(element['num_frames'])
      for key in ('captions', 'person1_texts', 'person2_texts'):
        element[key] = [element[key][0]]
      elements.append(element)
  assert len(elements) >= count, lengths
  return elements[:count]


@pytest.mark.parametrize('before, after', [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_a_batch_holds_each_clip_as_if_it_were_built_alone(artifacts, train_source, before,
                                                            after):
  # MakeBatch pads shorter clips by repeating their last frame to compute the batch's features
  # in one call: no real row may change, and every padded row must be zero.
  elements = _short_one_caption_elements(train_source, 3)
  batch = _make_batch(artifacts, elements, before, after)
  rows = [e['num_frames'] - 1 for e in elements]
  np.testing.assert_array_equal(batch[batch_lib.MASK].sum(axis=1), rows)
  for i, element in enumerate(elements):
    alone = _make(artifacts, element, before, after)
    for key in alone:
      np.testing.assert_array_equal(batch[key][i], alone[key], err_msg=key)
  assert np.all(batch[batch_lib.MOTION][batch[batch_lib.MASK] == 0] == 0)


def test_an_eval_batch_of_cropped_and_padded_clips_matches_the_clips_alone(artifacts,
                                                                           train_source):
  lengths = [train_source[i]['num_frames'] for i in range(len(train_source))]
  elements = [train_source[int(np.argmax(lengths))], train_source[int(np.argmin(lengths))]]
  batch = _make_batch(artifacts, elements, 0.5, 0.5, train=False)
  for i, element in enumerate(elements):
    alone = _make_batch(artifacts, [element], 0.5, 0.5, train=False)
    for key in alone:
      np.testing.assert_array_equal(batch[key][i], alone[key][0], err_msg=key)
  positions, rotations = representation.split_positions_motion(elements[0]['motion'])
  window = slice(0, _MAX_LEN + 1)  # Eval mode: the first max_len + 1 frames.
  np.testing.assert_allclose(batch[batch_lib.MOTION][0],
                             _expected_motion(artifacts, positions[:, window], rotations[:, window]),
                             atol=1e-4)


# --- Errors ---------------------------------------------------------------------------------

def _save_stats(path, mean, std):
  np.savez(path, mean=mean, std=std)
  return path


@pytest.mark.parametrize('mean_shape, std_value, pattern', [
    ((261,), 1.0, r'"mean" must be 262'),
    ((262,), 0.0, r'"std" must be positive'),
    ((262,), -1.0, r'"std" must be positive'),
])
def test_load_statistics_rejects_bad_files(tmp_path, mean_shape, std_value, pattern):
  path = _save_stats(tmp_path / 'stats.npz', np.zeros(mean_shape), np.full((262,), std_value))
  with pytest.raises(ValueError, match=str(path)) as info:
    pipeline.load_statistics(path)
  assert info.match(pattern)


def test_load_statistics_rejects_wrong_std_shape_nan_and_missing_keys(tmp_path):
  path = _save_stats(tmp_path / 'a.npz', np.zeros(262), np.ones((2, 262)))
  with pytest.raises(ValueError, match=rf'{path}.*"std".*\(2, 262\)'):
    pipeline.load_statistics(path)
  mean = np.zeros(262)
  mean[7] = np.nan
  path = _save_stats(tmp_path / 'b.npz', mean, np.ones(262))
  with pytest.raises(ValueError, match=rf'{path}.*"mean"'):
    pipeline.load_statistics(path)
  path = tmp_path / 'c.npz'
  np.savez(path, mean=np.zeros(262))
  with pytest.raises(ValueError, match=rf'{path}.*missing \[\'std\'\]'):
    pipeline.load_statistics(path)
  with pytest.raises(FileNotFoundError, match='absent.npz'):
    pipeline.load_statistics(tmp_path / 'absent.npz')


def test_load_statistics_accepts_a_good_file_and_artifacts_can_use_it(tmp_path, dataset_dir):
  mean, std = np.arange(262.0), np.linspace(0.5, 2.0, 262)
  path = _save_stats(tmp_path / 'published.npz', mean, std)
  got = pipeline.load_artifacts(dataset_dir, stats_file=str(path))
  np.testing.assert_array_equal(got.mean, mean.astype(np.float32))
  np.testing.assert_array_equal(got.std, std.astype(np.float32))
  x = np.random.default_rng(0).normal(size=(3, 262)).astype(np.float32)
  # float32 round trip through a mean of up to 261: a few ulps of 261.
  np.testing.assert_allclose(got.denormalise(got.normalise(x)), x, atol=1e-4)


def test_data_source_on_an_unbuilt_folder_says_how_to_build(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'dataset_info\.json.*data_pipelines\.prepare'):
    pipeline.data_source(tmp_path, 'train')


def test_data_source_unknown_split(dataset_dir):
  with pytest.raises(ValueError, match=r"no split 'training'.*'train'"):
    pipeline.data_source(dataset_dir, 'training')


def test_loader_for_a_split_smaller_than_one_batch_raises(dataset_dir, artifacts):
  size = len(pipeline.data_source(dataset_dir, 'val'))
  with pytest.raises(ValueError, match=rf"'val' has {size} examples"):
    _loader(dataset_dir, artifacts, split='val', batch_size=size + 1)
  with pytest.raises(ValueError, match='fewer than one global batch'):
    _loader(dataset_dir, artifacts, split='val', batch_size=size, shard_count=2)


def test_load_statistics_from_a_pair_of_npy_files(tmp_path, dataset_dir):
  mean, std = np.arange(262.0), np.linspace(0.5, 2.0, 262)
  np.save(tmp_path / 'global_mean.npy', mean)
  np.save(tmp_path / 'global_std.npy', std)
  got = pipeline.load_artifacts(dataset_dir, str(tmp_path / 'global_mean.npy'),
                                str(tmp_path / 'global_std.npy'))
  np.testing.assert_array_equal(got.mean, mean.astype(np.float32))
  np.testing.assert_array_equal(got.std, std.astype(np.float32))


def test_load_statistics_npy_errors_name_the_file(tmp_path):
  mean_path, std_path = tmp_path / 'mean.npy', tmp_path / 'std.npy'
  np.save(mean_path, np.zeros(262))
  with pytest.raises(ValueError, match=r'need both the mean and the std file'):
    pipeline.load_statistics(mean_path)
  np.save(std_path, np.ones(261))
  with pytest.raises(ValueError, match=rf'{std_path}: "std" must be 262 .*\(261,\)'):
    pipeline.load_statistics(mean_path, std_path)
  std_path.write_bytes(b'\x93NUMPY truncated')
  with pytest.raises(ValueError, match=rf'{std_path}: not a readable \.npy array for "std"'):
    pipeline.load_statistics(mean_path, std_path)
  with pytest.raises(FileNotFoundError, match='nothing.npy'):
    pipeline.load_statistics(mean_path, tmp_path / 'nothing.npy')


# --- Worker processes, per-process shards and the checkpointable iterator -------------------

def _assert_same_batches(batches, expected):
  assert len(batches) == len(expected)
  for a, b in zip(batches, expected):
    for key in batch_lib.spec(1, 1, 1):
      np.testing.assert_array_equal(a[key], b[key])


def test_iterator_state_restores_the_exact_continuation(dataset_dir, artifacts):
  iterator = iter(_loader(dataset_dir, artifacts, seed=5))
  _take(iterator, 3)
  state = iterator.get_state()
  expected = _take(iterator, 4)
  restored = iter(_loader(dataset_dir, artifacts, seed=5))
  restored.set_state(state)
  _assert_same_batches(_take(restored, 4), expected)


def test_worker_processes_give_the_same_batches_and_their_state_restores(dataset_dir,
                                                                        artifacts):
  # grain's elements are whole batches, so worker processes build the batches the main process
  # would (grain still ties a saved state to its worker count). in_memory does not apply to
  # workers (they read the files): the same batches either way.
  expected = _take(_loader(dataset_dir, artifacts, seed=2), 5)
  _assert_same_batches(
      _take(_loader(dataset_dir, artifacts, seed=2, worker_count=2, in_memory=True), 5), expected)
  iterator = iter(_loader(dataset_dir, artifacts, seed=2, worker_count=2))
  _assert_same_batches(_take(iterator, 2), expected[:2])
  state = iterator.get_state()
  restored = iter(_loader(dataset_dir, artifacts, seed=2, worker_count=2))
  restored.set_state(state)
  _assert_same_batches(_take(restored, 3), expected[2:])


def test_in_memory_records_give_the_same_batches_and_restore(dataset_dir, artifacts, tmp_path):
  records = pipeline.InMemorySource(dataset_dir, 'train')
  expected = _take(_loader(dataset_dir, artifacts, seed=6), 6)
  _assert_same_batches(_take(_loader(dataset_dir, artifacts, seed=6, in_memory=records), 6),
                       expected)
  _assert_same_batches(_take(_loader(dataset_dir, artifacts, seed=6, in_memory=True), 6),
                       expected)
  iterator = iter(_loader(dataset_dir, artifacts, seed=6, in_memory=records))
  _take(iterator, 2)
  restored = iter(_loader(dataset_dir, artifacts, seed=6, in_memory=records))
  restored.set_state(iterator.get_state())
  _assert_same_batches(_take(restored, 4), expected[2:])
  # A run whose data directory moved (a copied workdir) resumes: the state names no path.
  name_and_version = pathlib.Path(dataset_dir).parts[-2:]
  moved = tmp_path.joinpath('moved', *name_and_version)
  shutil.copytree(dataset_dir, moved)
  restored = iter(_loader(moved, artifacts, seed=6, in_memory=True))
  restored.set_state(iterator.get_state())
  _assert_same_batches(_take(restored, 4), expected[2:])


def test_in_memory_source_holds_read_only_copies_of_every_record(dataset_dir, artifacts,
                                                                 train_source):
  records = pipeline.InMemorySource(dataset_dir, 'train')
  assert len(records) == len(train_source)
  assert records.nbytes == sum(train_source[i]['motion'].nbytes for i in range(len(records)))
  for i in (0, len(records) - 1):
    np.testing.assert_array_equal(records[i]['motion'], train_source[i]['motion'])
    assert records[i]['captions'] == train_source[i]['captions']
    with pytest.raises(ValueError, match='read-only'):
      records[i]['motion'][0, 0, 0] = 1.0
  with pytest.raises(TypeError, match='worker_count > 0'):
    pickle.dumps(records)
  with pytest.raises(ValueError, match="in_memory holds .* split 'train', but the loader is "
                                       "for .* split 'val'"):
    _loader(dataset_dir, artifacts, split='val', in_memory=records)


def test_records_in_memory_follows_the_config(dataset_dir):
  config = ml_collections.ConfigDict({'in_memory': True, 'worker_count': 0})
  messages = []
  records = pipeline.records_in_memory(dataset_dir, 'val', config, log=messages.append)
  assert isinstance(records, pipeline.InMemorySource)
  assert len(records) == len(pipeline.data_source(dataset_dir, 'val'))
  assert len(messages) == 1 and f'{len(records)} records' in messages[0]
  for off in ({'in_memory': False, 'worker_count': 0}, {'in_memory': True, 'worker_count': 2}):
    assert pipeline.records_in_memory(dataset_dir, 'val', ml_collections.ConfigDict(off),
                                      log=messages.append) is False
  assert len(messages) == 1


def test_process_shards_are_disjoint_and_cover_the_records(dataset_dir, artifacts):
  source = pipeline.data_source(dataset_dir, 'val')
  shards = [_take(_loader(dataset_dir, artifacts, split='val', train=False, batch_size=1,
                          num_epochs=1, shard_index=i, shard_count=2), len(source))
            for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(source) // 2  # Remainder dropped.
  seen = [tuple(b[batch_lib.TEXT_TOKENS][0]) + (float(b[batch_lib.MOTION].sum()),)
          for shard in shards for b in shard]
  assert len(set(seen)) == len(seen)


# --- The sampler ---------------------------------------------------------------------------

def _keys(sampler, shard_index, shard_count, count):
  """Record keys of one process's first ``count`` batches of one, indexed as grain's loader
  does."""
  return [int(k) for i in range(count)
          for k in sampler.record_keys(i * shard_count + shard_index)]


def test_sampler_epochs_are_fresh_permutations_of_each_processs_contiguous_shard():
  num_records, count = 23, 3  # 7 records per shard, 2 dropped.
  shards = []
  for shard_index in range(count):
    sampler = pipeline.EpochShuffleSampler(num_records, shard_index=shard_index,
                                           shard_count=count, shuffle=True, num_epochs=3, seed=4)
    assert len(sampler) == 3 * 7 * count
    keys = _keys(sampler, shard_index, count, 21)
    epochs = [keys[i:i + 7] for i in range(0, 21, 7)]
    for epoch in epochs:
      assert sorted(epoch) == list(range(7 * shard_index, 7 * shard_index + 7))
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    shards.append(set(keys))
    with pytest.raises(IndexError, match='outside'):
      sampler[len(sampler)]
  assert set.union(*shards) == set(range(21)) and sum(map(len, shards)) == 21


def test_sampler_is_deterministic_in_any_reading_order_and_shuffle_off_keeps_file_order():
  def sampler(seed, shuffle=True):
    return pipeline.EpochShuffleSampler(50, shuffle=shuffle, num_epochs=None, seed=seed)
  def read(sampler, index):
    return int(sampler.record_keys(index)[0]), sampler[index].rng.integers(1 << 30)
  forward = [read(sampler(9), i) for i in range(150)]
  backward = sampler(9)  # A restored reader starts mid-way; its orders must be the same.
  assert [read(backward, i) for i in reversed(range(150))] == forward[::-1]
  assert [k for k, _ in forward] != _keys(sampler(10), 0, 1, 150)
  assert _keys(sampler(9, shuffle=False), 0, 1, 120) == [i % 50 for i in range(120)]
  assert len(sampler(9)) == sys.maxsize
  assert repr(sampler(9)) == repr(sampler(9)) != repr(sampler(10))


def test_sampler_batches_are_consecutive_runs_of_the_shards_record_stream():
  # 11 records per shard, batches of 4: a batch may end one epoch and start the next.
  num_records, batch_size, shard_count = 23, 4, 2
  for shard_index in range(shard_count):
    def sampler(size, num_epochs=None):
      return pipeline.EpochShuffleSampler(num_records, batch_size=size, shard_index=shard_index,
                                          shard_count=shard_count, shuffle=True,
                                          num_epochs=num_epochs, seed=7)
    stream = _keys(sampler(1), shard_index, shard_count, 44)
    batched = _keys(sampler(batch_size), shard_index, shard_count, 11)
    assert batched == stream
    assert sorted(stream[:11]) == sorted(stream[11:22]) == list(
        range(11 * shard_index, 11 * shard_index + 11))
    assert stream[:11] != stream[11:22]
    assert len(sampler(batch_size, num_epochs=3)) == 33 // batch_size * shard_count  # 8 whole.
  assert repr(sampler(4)) != repr(sampler(2))  # A resumed run checks its batch size.


@pytest.mark.parametrize('kwargs, message', [
    ({'num_records': 2, 'shard_count': 3}, 'at least one batch per shard'),
    ({'num_records': 5, 'batch_size': 3, 'shard_count': 2}, 'at least one batch per shard'),
    ({'batch_size': 0}, 'batch_size >= 1'),
    ({'num_epochs': 0}, 'num_epochs >= 1'),
    ({'shard_index': 3, 'shard_count': 3}, r'shard_index must be in \[0, 3\)'),
    ({'seed': -1}, r'seed must be in \[0, 2\*\*32\)'),
])
def test_sampler_rejects_bad_arguments(kwargs, message):
  arguments = dict(num_records=10, shuffle=True, num_epochs=1, seed=0) | kwargs
  with pytest.raises(ValueError, match=message):
    pipeline.EpochShuffleSampler(arguments.pop('num_records'), **arguments)
