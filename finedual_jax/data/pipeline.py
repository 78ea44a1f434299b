"""The input pipeline: a TFDS array_record data set read through grain into fixed-shape batches.

Batches are built whole (``MakeBatch``): grain handles one element per batch. Per example
(DESIGN §1.2, §5): pick a caption, crop to at most ``max_len + 1`` frames at a
random start, optionally swap the persons (with their texts) before canonicalisation, compute
the 262-d features in person 1's frame, optionally swap again after, normalise, pad to
``max_len`` rows with a mask and tokenise the three texts. Batches follow ``batch.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pathlib
import queue
import sys
import threading
import time
from typing import Sequence

from absl import flags
import grain
import numpy as np
import tensorflow_datasets as tfds

from finedual_jax.config_checks import READ_AHEAD_PRIORITIES
from finedual_jax.data import batch as batch_lib
from finedual_jax.data import representation as representation_lib
from finedual_jax.data.text_features import TextFeatureBank
from finedual_jax.data.tokenizer import Tokenizer
from finedual_jax.motion import features as features_lib

STATS_FILE = 'motion_stats.npz'  # mean [262], std [262] over the training split.
TOKENIZER_FILE = 'spm.model'
STD_FLOOR = 1e-2  # Near-constant channels would otherwise be blown up by normalisation.


@dataclasses.dataclass(frozen=True)
class Artifacts:
  """What a data set build produces beside the records: normalisation and the tokenizer."""
  dataset_dir: pathlib.Path
  mean: np.ndarray
  std: np.ndarray
  tokenizer: Tokenizer
  representation: representation_lib.Representation = representation_lib.POSITIONS
  text_features: TextFeatureBank | None = None  # Frozen features in place of the encoder.

  @property
  def text_feature_shape(self) -> tuple[int, int] | None:
    """(Lf, Df) of the frozen text features, None without them."""
    bank = self.text_features
    return None if bank is None else (bank.max_len, bank.dim)

  def normalise(self, features: np.ndarray) -> np.ndarray:
    return ((features - self.mean) / self.std).astype(np.float32)

  def denormalise(self, features: np.ndarray) -> np.ndarray:
    return (np.asarray(features, np.float64) * self.std + self.mean).astype(np.float32)


def _read_array(path: pathlib.Path, name: str) -> np.ndarray:
  if not path.is_file():
    raise FileNotFoundError(f'normalisation statistics not found: {path}')
  try:
    return np.load(path, allow_pickle=False)
  except (ValueError, EOFError, OSError) as e:
    raise ValueError(f'{path}: not a readable .npy array for "{name}" ({e}).') from None


def load_statistics(path: str | pathlib.Path, std_path: str | pathlib.Path = '', *,
                    feature_dim: int = features_lib.FEATURE_DIM) -> tuple[np.ndarray, np.ndarray]:
  """Reads and checks ``mean`` and ``std`` (``feature_dim`` each).

  ``path`` is an .npz holding both (what the build writes), or the mean as an .npy file with
  the std in ``std_path`` (the form in which published statistics are often shared).
  """
  path = pathlib.Path(path)
  if path.suffix == '.npy' or std_path:
    if not (path.suffix == '.npy' and std_path):
      raise ValueError(f'statistics from .npy files need both the mean and the std file; found '
                       f'mean {str(path)!r} and std {str(std_path)!r}.')
    std_path = pathlib.Path(std_path)
    mean, std = _read_array(path, 'mean'), _read_array(std_path, 'std')
    where = {'mean': path, 'std': std_path}
  else:
    if not path.is_file():
      raise FileNotFoundError(f'normalisation statistics not found: {path}')
    with np.load(path) as stats:
      missing = {'mean', 'std'} - set(stats.files)
      if missing:
        raise ValueError(f'{path}: expected arrays "mean" and "std", missing {sorted(missing)}.')
      mean, std = stats['mean'], stats['std']
    where = {'mean': path, 'std': path}
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  for name, value in (('mean', mean), ('std', std)):
    if value.shape != (feature_dim,) or not np.all(np.isfinite(value)):
      raise ValueError(f'{where[name]}: "{name}" must be {feature_dim} finite numbers, '
                       f'found shape {value.shape}.')
  if np.any(std <= 0):
    raise ValueError(f'{where["std"]}: "std" must be positive; found {np.sum(std <= 0)} entries '
                     '<= 0.')
  return mean, std


def load_artifacts(dataset_dir: str | pathlib.Path, stats_file: str = '',
                   stats_std_file: str = '', text_features_file: str = '') -> Artifacts:
  """Loads a built data set's statistics (or ``stats_file`` [+ ``stats_std_file``]), tokenizer
  and, if given, the frozen text features of ``text_features_file``."""
  dataset_dir = pathlib.Path(dataset_dir)
  representation = representation_of(dataset_dir)
  mean, std = load_statistics(stats_file or dataset_dir / STATS_FILE, stats_std_file,
                              feature_dim=representation.feature_dim)
  bank = TextFeatureBank(text_features_file) if text_features_file else None
  return Artifacts(dataset_dir, mean, std, Tokenizer(dataset_dir / TOKENIZER_FILE),
                   representation, bank)


def _builder(dataset_dir: pathlib.Path):
  if not (dataset_dir / 'dataset_info.json').is_file():
    raise FileNotFoundError(f'{dataset_dir} is not a built TFDS data set (no dataset_info.json); '
                            'build it with python -m data_pipelines.prepare.')
  return tfds.builder_from_directory(str(dataset_dir))


def representation_of(dataset_dir: str | pathlib.Path) -> representation_lib.Representation:
  """The motion representation a built data set stores (from its ``motion`` feature's width)."""
  dataset_dir = pathlib.Path(dataset_dir)
  shape = _builder(dataset_dir).info.features['motion'].shape
  return representation_lib.from_stored_dim(shape[-1], str(dataset_dir))


def data_source(dataset_dir: str | pathlib.Path, split: str):
  """Random-access source over one split of a built TFDS data set (no TensorFlow needed)."""
  dataset_dir = pathlib.Path(dataset_dir)
  builder = _builder(dataset_dir)
  if split not in builder.info.splits:
    raise ValueError(f'{dataset_dir}: no split {split!r}; it has {sorted(builder.info.splits)}.')
  return builder.as_data_source(split=split)


class InMemorySource:
  """A split's records decoded once into memory: a grain random-access source.

  Reading a record from the array_record files costs ~0.4 ms of host time (decompression and
  proto parsing), more than building the example from it; small models train in steps of a few
  milliseconds, so re-reading every epoch shows up as time spent waiting for data. The records
  are decoded once, in order, and their arrays made read-only (the examples built from them are
  copies). Records and order are those of the files, so batches are the same as from disk.
  """

  def __init__(self, dataset_dir: str | pathlib.Path, split: str):
    self.dataset_dir, self.split = pathlib.Path(dataset_dir), split
    source = data_source(dataset_dir, split)
    self._records = tuple(_frozen(source[i]) for i in range(len(source)))
    # Grain checks a restored iterator's source by repr: it names the data set, not where it
    # lies, so a run (or its data) moved to another directory still resumes.
    self._file_source_repr = repr(source)
    self.nbytes = sum(value.nbytes for record in self._records for value in record.values()
                      if isinstance(value, np.ndarray))

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int):
    return self._records[index]

  def __repr__(self) -> str:
    return (f'InMemorySource({self._file_source_repr}, {len(self)} records, '
            f'{self.nbytes / 2**20:.1f} MiB)')

  def __reduce__(self):  # Worker processes would each get a pickled copy of every record.
    raise TypeError(f'{self!r} is not sent to worker processes; with data.worker_count > 0 the '
                    'workers read the files themselves (make_loader does this).')


def records_in_memory(dataset_dir: str | pathlib.Path, split: str, data_config,
                      log=print) -> InMemorySource | bool:
  """``split`` decoded into memory if ``data_config.in_memory`` (and no worker processes), else
  False: the ``in_memory`` argument of ``make_loader``."""
  if not data_config.get('in_memory', False) or data_config.get('worker_count', 0):
    return False
  start = time.perf_counter()
  records = InMemorySource(dataset_dir, split)
  log(f'data: {split} split decoded into host memory: {len(records)} records, '
      f'{records.nbytes / 2**20:.0f} MiB in {time.perf_counter() - start:.1f} s (data.in_memory)')
  return records


def _frozen(record: dict) -> dict:
  for value in record.values():
    if isinstance(value, np.ndarray):
      value.flags.writeable = False
  return record


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


class MakeBatch(grain.transforms.RandomMap):
  """One batch's stored clips -> a batch of the batch contract, built in one go.

  Per clip (DESIGN §1.2): crop to at most ``max_len + 1`` frames at a random start, pick a
  caption, optionally swap the persons (with their texts) before canonicalisation, and again
  after; then normalise, pad to ``max_len`` rows with a mask and tokenise the three texts.
  grain sees one element per batch: its per-element work was most of a small model's input
  pipeline on two cores. The features are computed for several clips per vectorised call
  (``_FRAMES_PER_CALL``): clips shorter than the longest of their call are padded by repeating
  their last frame, which leaves every real row unchanged (rows look one frame ahead, and the
  floor is the minimum over frames), and only the real rows are kept.
  """

  def __init__(self, artifacts: Artifacts, *, max_len: int, max_text_len: int, train: bool,
               swap_before_p: float = 0.5, swap_after_p: float = 0.5):
    self.artifacts = artifacts
    self.max_len = max_len
    self.max_text_len = max_text_len
    self.train = train
    self.swap_before_p = swap_before_p if train else 0.0
    self.swap_after_p = swap_after_p if train else 0.0
    self._tokens: dict[str, np.ndarray] = {}  # Texts recur every epoch: encode each once.

  def _encode(self, texts: list[str]) -> np.ndarray:
    if len(self._tokens) > _TOKEN_CACHE_SIZE:
      self._tokens.clear()
    rows = []
    for text in texts:
      row = self._tokens.get(text)
      if row is None:
        row = self._tokens[text] = self.artifacts.tokenizer.encode(text, self.max_text_len)
      rows.append(row)
    return np.stack(rows)

  def random_map(self, records: Sequence[dict], rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(records)
    lengths = np.array([record['motion'].shape[0] for record in records])
    windows = np.minimum(lengths, self.max_len + 1)  # T frames give T-1 feature rows.
    draws = rng.random((4, n))  # Crop start, caption, swap before, swap after.
    if self.train:  # floor(u * k) is uniform on 0..k-1 (to within 2**-53).
      starts = (draws[0] * (lengths - windows + 1)).astype(np.int64)
      choices = (draws[1] * [len(record['captions']) for record in records]).astype(np.int64)
    else:
      starts = choices = np.zeros(n, np.int64)
    swap_before = draws[2] < self.swap_before_p  # The canonical frame follows the new person 1.
    swap_after = draws[3] < self.swap_after_p  # Either person may be the one at the origin.
    starts, windows, choices = starts.tolist(), windows.tolist(), choices.tolist()
    representation = self.artifacts.representation
    out = np.zeros((n, self.max_len, 2, representation.feature_dim), np.float32)
    # A few clips per features call: one call per clip is mostly NumPy's per-call overhead for
    # short windows, and many long clips at once leave the cache (at T = 300, 32 clips in one
    # call took twice as long as one at a time).
    chunk = max(1, _FRAMES_PER_CALL // max(windows))
    for first in range(0, n, chunk):
      members = range(first, min(first + chunk, n))
      motion = np.empty((len(members), max(windows[i] for i in members))
                        + records[first]['motion'].shape[1:], records[first]['motion'].dtype)
      for row, i in enumerate(members):
        clip = records[i]['motion'][starts[i]:starts[i] + windows[i]]
        motion[row, :windows[i]] = clip[:, ::-1] if swap_before[i] else clip
        motion[row, windows[i]:] = motion[row, windows[i] - 1]
      for i, feats in zip(members, representation.pair_features(motion)):  # [2, frames-1, F]
        count = windows[i] - 1  # Rows past count come from the repeated last frame.
        feats = feats[::-1, :count] if swap_after[i] else feats[:, :count]
        np.subtract(feats.transpose(1, 0, 2), self.artifacts.mean, out=out[i, :count])
    valid = out[:, :max(windows) - 1]
    np.divide(valid, self.artifacts.std, out=valid)
    mask = (np.arange(self.max_len) < np.array(windows)[:, None] - 1).astype(np.float32)
    texts = []
    for record, c, before, after in zip(records, choices, swap_before, swap_after):
      persons = [_text(record['person1_texts'][c]), _text(record['person2_texts'][c])]
      texts += [_text(record['captions'][c])] + (persons[::-1] if before != after else persons)
    tokens = self._encode(texts).reshape(n, 3, self.max_text_len)
    batch = {batch_lib.MOTION: out, batch_lib.MASK: mask,
             batch_lib.TEXT_TOKENS: tokens[:, 0], batch_lib.PERSON_TOKENS: tokens[:, 1:]}
    if self.artifacts.text_features is not None:
      features, feature_mask = self.artifacts.text_features.lookup(texts)
      features = features.reshape(n, 3, *features.shape[1:])
      feature_mask = feature_mask.reshape(n, 3, -1)
      batch.update({batch_lib.TEXT_FEATURES: features[:, 0],
                    batch_lib.TEXT_FEATURE_MASK: feature_mask[:, 0],
                    batch_lib.PERSON_FEATURES: features[:, 1:],
                    batch_lib.PERSON_FEATURE_MASK: feature_mask[:, 1:]})
    return batch


_FRAMES_PER_CALL = 320  # Clip frames per features call (MakeBatch).
_TOKEN_CACHE_SIZE = 1 << 18  # Texts; InterHuman has ~70k distinct captions and person texts.


class EpochShuffleSampler:
  """A grain sampler of batches: this process's shard of the records, in a fresh order each
  epoch, cut into consecutive batches of ``batch_size`` records.

  Element ``index`` (grain asks this process for ``shard_index``, ``shard_index +
  shard_count``, ...) is this process's batch ``index // shard_count``; ``record_keys`` says
  which records it holds and ``BatchSource`` reads them. Each process reads its records as one
  stream, epoch after epoch, so a batch may end one epoch and start the next; with a finite
  ``num_epochs`` the last incomplete batch is dropped.

  grain's ``IndexSampler`` finds each shuffled position with a stateless index shuffle, which
  for small splits cycle-walks over a domain far larger than the split: ~0.1 ms per record for
  a few hundred records. Here each epoch's order is one NumPy permutation, drawn from (seed,
  epoch) when the epoch is first reached and kept while it is read. Sharding is grain's (equal
  contiguous shards, remainder dropped). The same seed gives the same batches, on resume too
  (grain saves the position; ``__repr__`` is what it checks a restored state against).
  """

  def __init__(self, num_records: int, *, batch_size: int = 1, shard_index: int = 0,
               shard_count: int = 1, shuffle: bool, num_epochs: int | None, seed: int):
    if not 0 <= shard_index < shard_count:
      raise ValueError(f'EpochShuffleSampler: shard_index must be in [0, {shard_count}), found '
                       f'{shard_index}.')
    if batch_size < 1 or num_records < shard_count * batch_size or (
        num_epochs is not None and num_epochs < 1):
      raise ValueError(f'EpochShuffleSampler: need batch_size >= 1, at least one batch per shard '
                       f'and num_epochs >= 1 or None, found {num_records} records for '
                       f'{shard_count} shards, batch_size={batch_size}, num_epochs={num_epochs}.')
    if not 0 <= seed < 2**32:
      raise ValueError(f'EpochShuffleSampler: seed must be in [0, 2**32), found {seed}.')
    self._num_records, self._shuffle, self._num_epochs, self._seed = (
        num_records, shuffle, num_epochs, seed)
    self._batch_size = batch_size
    self._shard_index, self._shard_count = shard_index, shard_count
    # What the DataLoader is given too: it asks for this process's indices only.
    self.shard_options = grain.sharding.ShardOptions(
        shard_index=shard_index, shard_count=shard_count, drop_remainder=True)
    self._per_shard = num_records // shard_count
    self._first = shard_index * self._per_shard
    self._orders: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    if self._num_epochs is None:
      return sys.maxsize
    return self._num_epochs * self._per_shard // self._batch_size * self._shard_count

  def __repr__(self) -> str:
    return (f'EpochShuffleSampler(num_records={self._num_records}, batch_size='
            f'{self._batch_size}, shard={self._shard_index}/{self._shard_count}, shuffle='
            f'{self._shuffle}, num_epochs={self._num_epochs}, seed={self._seed})')

  def _order(self, epoch: int) -> np.ndarray:
    order = self._orders.get(epoch)
    if order is None:  # Keeps the epoch before too, for a reader still finishing it.
      order = np.random.default_rng((self._seed, epoch)).permutation(self._per_shard)
      self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
      self._orders[epoch] = order
    return order

  def _check(self, index: int) -> None:
    if index < 0 or index >= len(self):
      raise IndexError(f'EpochShuffleSampler: index {index} is outside [0, {len(self)}).')

  def record_keys(self, index: int) -> np.ndarray:
    """The records of element ``index``: [batch_size] keys into the split."""
    self._check(index)
    epoch, start = divmod(index // self._shard_count * self._batch_size, self._per_shard)
    parts, size = [], self._batch_size
    while size:  # A batch spans at most two epochs (a shard holds at least one batch).
      stop = min(start + size, self._per_shard)
      parts.append(self._order(epoch)[start:stop] if self._shuffle else np.arange(start, stop))
      size -= stop - start
      epoch, start = epoch + 1, 0
    return self._first + (parts[0] if len(parts) == 1 else np.concatenate(parts))

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    self._check(index)  # The source reads the records of record_keys(index).
    return grain.RecordMetadata(index=index, record_key=index,
                                rng=np.random.Generator(np.random.Philox(key=self._seed + index)))


class Records(tuple):
  """One batch's records, handed through grain as a single leaf.

  grain walks every element it reads to total its bytes for its metrics: over a plain list of
  records that is ~130 leaves and ~0.1 ms per batch of 8, a few per cent of a small model's
  step on two cores. A tuple subclass is not a pytree node, so the walk stops at it (grain's
  bytes-read metric then counts these reads as 0 bytes; nothing else uses it).
  """


class BatchSource:
  """grain's random-access source for ``make_loader``: element ``index`` holds the records of
  the sampler's element ``index`` (``Records``), so grain handles one element per batch."""

  def __init__(self, source, sampler: EpochShuffleSampler):
    self._source, self._sampler = source, sampler

  def __len__(self) -> int:
    return len(self._sampler)

  def __getitem__(self, index: int) -> Records:
    return Records([self._source[int(key)] for key in self._sampler.record_keys(index)])

  def __repr__(self) -> str:  # What grain checks a restored state against: the records' source.
    return f'BatchSource({self._source!r})'


def make_loader(dataset_dir: str | pathlib.Path, split: str, artifacts: Artifacts, *,
                batch_size: int, max_len: int, max_text_len: int, train: bool, seed: int,
                num_epochs: int | None = None, swap_before_p: float = 0.5,
                swap_after_p: float = 0.5, worker_count: int = 0, shard_index: int = 0,
                shard_count: int = 1, read_threads: int = 1,
                in_memory: bool | InMemorySource = False) -> grain.DataLoader:
  """A grain loader of fixed-shape batches for this process's shard of ``split``.

  ``batch_size`` is this process's share of the global batch; the remainder is dropped so every
  batch has the same shape. Iterating is deterministic for a seed and checkpointable.

  ``in_memory``: read the split's records from an ``InMemorySource`` (True: decode one now; or
  one already loaded) instead of the files — the same batches, without decoding each record
  again every epoch. Only for ``worker_count=0``: worker processes read the files themselves.

  ``read_threads`` read records ahead of the map (per process or worker). grain's default (16
  threads, 500 reads in flight) checks every pending read per element and competes with the
  per-example map for the GIL: on 2 cores one thread and a half-batch buffer read faster.
  """
  if worker_count and not flags.FLAGS.is_parsed():
    # grain's worker processes read its absl flags; outside an absl program (a notebook,
    # pytest) nothing parsed them, so use their defaults instead of failing in the workers.
    flags.FLAGS.mark_as_parsed()
  if isinstance(in_memory, InMemorySource) and (
      in_memory.dataset_dir, in_memory.split) != (pathlib.Path(dataset_dir), split):
    raise ValueError(f'make_loader: in_memory holds {in_memory.dataset_dir} split '
                     f'{in_memory.split!r}, but the loader is for {dataset_dir} split {split!r}.')
  if worker_count or not in_memory:
    source = data_source(dataset_dir, split)
  else:
    source = in_memory if isinstance(in_memory, InMemorySource) else InMemorySource(dataset_dir,
                                                                                   split)
  if len(source) < batch_size * shard_count:
    raise ValueError(f'{dataset_dir} split {split!r} has {len(source)} examples, fewer than one '
                     f'global batch ({batch_size} x {shard_count} processes).')
  sampler = EpochShuffleSampler(len(source), batch_size=batch_size, shard_index=shard_index,
                                shard_count=shard_count, shuffle=train, num_epochs=num_epochs,
                                seed=seed)
  # Records already in memory need no read-ahead: a read thread would only add hand-offs.
  read_options = grain.ReadOptions(
      num_threads=0 if isinstance(source, InMemorySource) else read_threads,
      prefetch_buffer_size=1)
  make_batch = MakeBatch(artifacts, max_len=max_len, max_text_len=max_text_len, train=train,
                         swap_before_p=swap_before_p, swap_after_p=swap_after_p)
  return grain.DataLoader(
      data_source=BatchSource(source, sampler), sampler=sampler, operations=[make_batch],
      worker_count=worker_count, read_options=read_options, shard_options=sampler.shard_options)


def lower_thread_priority(priority: str) -> bool:
  """Lowers the calling thread's CPU priority; True if it did.

  'idle': Linux's SCHED_IDLE policy (the thread runs when a core would otherwise idle);
  'low': niceness 19; 'normal': unchanged. Only on Linux, where both apply to the calling
  thread alone, and never to the main thread.
  """
  if (priority == 'normal' or not sys.platform.startswith('linux')
      or threading.current_thread() is threading.main_thread()):
    return False
  thread = threading.get_native_id()
  try:
    if priority == 'idle':
      os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
    else:
      os.setpriority(os.PRIO_PROCESS, thread, 19)
  except OSError:  # A sandbox that forbids it: run at normal priority.
    return False
  return True


class ReadAhead:
  """A loader's iterator read ``batches`` ahead on a background thread (see ``read_ahead``)."""

  def __init__(self, iterator, batches: int, priority: str):
    self._iterator, self._batches, self._priority = iterator, batches, priority
    self._state = iterator.get_state()  # After the last batch handed out.
    self._thread: threading.Thread | None = None  # With its queue and stop event, while
    self._queue: queue.Queue | None = None          # reading ahead.
    self._stop: threading.Event | None = None
    self.lowered = False  # Whether the reading thread's priority was lowered (for tests).

  def __iter__(self):
    return self

  def start_prefetch(self) -> None:
    """Starts reading ahead (idempotent; also what grain's checkpoint handler calls after
    ``set_state``)."""
    if self._thread is None:
      self._queue, self._stop = queue.Queue(self._batches), threading.Event()
      self._thread = threading.Thread(target=self._read, args=(self._queue, self._stop),
                                      name='finedual-read-ahead', daemon=True)
      self._thread.start()

  def __next__(self):
    self.start_prefetch()
    batch, state, error = self._queue.get()
    if error is not None:  # StopIteration included: the thread has ended.
      self._halt()
      raise error
    self._state = state
    return batch

  def _read(self, out: queue.Queue, stop: threading.Event) -> None:
    self.lowered = lower_thread_priority(self._priority)
    try:
      while not stop.is_set():
        batch = next(self._iterator)
        out.put((batch, copy.deepcopy(self._iterator.get_state()), None))
    except BaseException as e:  # pylint: disable=broad-except  (re-raised by __next__)
      out.put((None, None, e))

  def _halt(self) -> None:
    """Stops the thread and drops what it read ahead."""
    if self._thread is None:
      return
    self._stop.set()
    self._drain()  # Unblocks its put; it then sees the stop (at most one more put).
    self._thread.join()
    self._drain()
    self._thread = self._queue = None

  def _drain(self) -> None:
    try:
      while True:
        self._queue.get_nowait()
    except queue.Empty:
      pass

  def get_state(self):
    return self._state

  def set_state(self, state) -> None:
    self._halt()
    self._iterator.set_state(state)
    self._state = self._iterator.get_state()

  def close(self) -> None:
    self._halt()


def read_ahead(iterator, batches: int, *, priority: str = 'idle'):
  """``iterator`` (a loader's, checkpointable) read ``batches`` ahead on a background thread.

  The same batches in the same order, and errors raised where they would have been;
  ``get_state`` is the state after the last batch taken from it, and ``set_state`` drops what
  was read ahead, so checkpoints are exact as before. ``priority``
  (``lower_thread_priority``) is the thread's CPU priority: by default it builds batches only
  on cores the compiled step leaves idle (a tiny InterGen step on the 2-core benchmark machine
  keeps ~1.45 of them busy on average) instead of taking cores from it. Where other busy
  processes share the host, 'low' or 'normal' keep it from starving. ``batches=0`` returns
  ``iterator`` itself. ``close()`` stops the thread. (grain's ``ThreadPrefetchDatasetIterator``
  does the same but spent ~120 µs of the main thread per batch on its statistics.)
  """
  if batches < 0:
    raise ValueError(f'read_ahead: batches must be >= 0 (0: no read-ahead), found {batches}.')
  if priority not in READ_AHEAD_PRIORITIES:
    raise ValueError(f'read_ahead: priority must be one of {list(READ_AHEAD_PRIORITIES)}, '
                     f'found {priority!r}.')
  return ReadAhead(iterator, batches, priority) if batches else iterator


def stop_reading_ahead(iterator) -> None:
  """Stops ``iterator``'s read-ahead thread if it has one (``read_ahead`` with batches=0
  returns the loader's own iterator, which has none)."""
  if isinstance(iterator, ReadAhead):
    iterator.close()
