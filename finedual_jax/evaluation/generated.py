"""Generated motions for an evaluation: a trained run, its sampler, and an on-disk cache.

Clip i of a replication with seed r gets the noise ``normal(fold_in(fold_in(key(r), index_i),
j))`` — ``index_i`` its record index in the split, ``j`` the sample number (0 for the main set,
0..S-1 for MModality) — as ``generation.generate`` keys it, so a sample does not depend on its
batch or on which other clips are evaluated. Unlike ``generate``, every row has its own
length (the ground truth's).

Motions are kept ragged (``Motions``: the valid rows of all clips, and their lengths) and cached
per run and replication as ``.npz`` files written atomically, each with a fingerprint of what
produced it; a file whose fingerprint differs is regenerated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from finedual_jax import generation
from finedual_jax import trainer
from finedual_jax.data.pipeline import Artifacts
from finedual_jax.diffusion.schedule import Schedule, q_sample
from finedual_jax.evaluation import ground_truth
from finedual_jax.evaluation import metrics
from finedual_jax.models import precision
from finedual_jax.motion import body_parts

# Noise levels at which the distance predictor is scored (low, middle, high noise of 1000).
DISTANCE_TIMESTEPS = (100, 400, 700)
_DISTANCE_NOISE_SALT = 1_000_003  # Keeps these noises apart from the sampling noises.


@dataclasses.dataclass(frozen=True)
class Motions:
  """N two-person motions of different lengths: ``rows`` [sum(lengths), 2, F], ``lengths`` [N]."""
  rows: np.ndarray
  lengths: np.ndarray

  def __len__(self) -> int:
    return len(self.lengths)

  @classmethod
  def from_padded(cls, features: np.ndarray, lengths: np.ndarray) -> 'Motions':
    lengths = np.asarray(lengths, np.int32)
    rows = np.concatenate([f[:n] for f, n in zip(features, lengths)]) if len(lengths) else (
        np.zeros((0,) + features.shape[2:], np.float32))
    return cls(rows, lengths)

  def padded(self, max_frames: int, select: Sequence[int] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Features [n, max_frames, 2, F] (zeros after each length) and mask [n, max_frames]."""
    select = range(len(self)) if select is None else select
    starts = np.concatenate([[0], np.cumsum(self.lengths)])
    out = np.zeros((len(select), max_frames) + self.rows.shape[1:], np.float32)
    for k, i in enumerate(select):
      out[k, :self.lengths[i]] = self.rows[starts[i]:starts[i + 1]]
    lengths = self.lengths[list(select)]
    return out, (np.arange(max_frames)[None] < lengths[:, None]).astype(np.float32)


@dataclasses.dataclass
class Run:
  """A trained run restored for evaluation, with the sampling settings it is evaluated with."""
  name: str
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  artifacts: Artifacts
  schedule: Schedule
  step: int
  settings: dict[str, Any]  # ddim_steps, guidance_overall, guidance_individual, weights.

  @property
  def max_len(self) -> int:
    return int(self.config.data.max_len)

  def config_hash(self) -> str:
    return hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]

  def describe(self) -> dict[str, Any]:
    return {'workdir': str(self.workdir), 'checkpoint_step': self.step,
            'model': self.config.model.name, 'dataset_dir': str(self.artifacts.dataset_dir),
            'representation': self.artifacts.representation.name, 'max_len': self.max_len,
            **self.settings}


def load_run(workdir: str | pathlib.Path, name: str, *, ddim_steps: int | None = None,
             guidance_overall: float | None = None, guidance_individual: float | None = None,
             raw_weights: bool = False) -> Run:
  """Restores the latest checkpoint of ``workdir``; unset settings come from its config."""
  workdir = pathlib.Path(workdir).absolute()
  if not workdir.is_dir():
    raise FileNotFoundError(f'run {workdir} does not exist; pass a training workdir '
                            '(python -m finedual_jax.train --workdir DIR).')
  config, model, state, artifacts, schedule = trainer.load_trained(workdir)
  diffusion = config.diffusion
  settings = {
      'ddim_steps': int(ddim_steps or diffusion.ddim_steps),
      'guidance_overall': float(diffusion.guidance_overall if guidance_overall is None
                                else guidance_overall),
      'guidance_individual': float(diffusion.guidance_individual if guidance_individual is None
                                   else guidance_individual),
      'weights': 'raw' if raw_weights else 'ema'}
  params = state.params if raw_weights else state.ema_params
  return Run(name, workdir, config, model, params, artifacts, schedule, int(state.step),
             settings)


class Sampler:
  """One compiled sampler per run: per-row lengths and texts, fixed batch shape."""

  def __init__(self, run: Run, batch_size: int):
    self.run, self.batch_size = run, batch_size
    self._sample = generation.make_sampler(
        run.model, run.schedule, w_overall=run.settings['guidance_overall'],
        w_individual=run.settings['guidance_individual'], ddim_steps=run.settings['ddim_steps'],
        compute_dtype=precision.compute_dtype(run.config.model))
    shape = (run.max_len, 2, run.artifacts.representation.feature_dim)

    def noise(base, i, j):  # generation.generate's keying, vectorised.
      return jax.vmap(lambda a, b: jax.random.normal(
          jax.random.fold_in(jax.random.fold_in(base, a), b), shape))(i, j)

    self._noise = jax.jit(noise)
    self._apply = jax.jit(lambda p, x, t, m, text, person: run.model.apply(
        {'params': p}, x, t, m, text, person, deterministic=True)[1])

  def _texts(self, texts: Sequence[str], person1: Sequence[str], person2: Sequence[str]):
    return generation.encode_texts(self.run.artifacts, texts, person1, person2,
                                   self.run.config.data.max_text_len, truncate=True)

  def _chunks(self, n: int):
    for start in range(0, n, self.batch_size):
      rows = list(range(start, min(start + self.batch_size, n)))
      yield rows, rows + [rows[-1]] * (self.batch_size - len(rows))  # One compiled shape.

  def sample(self, clips: ground_truth.Clips, select: Sequence[int], sample_ids: Sequence[int],
             seed: int, progress: Callable[[int], None] = lambda n: None) -> Motions:
    """Motion k is clip ``select[k]``'s texts and length with noise (seed, index, sample_ids[k]).

    Returns de-normalised features; ``progress(k)`` after each batch with the motions done.
    """
    run = self.run
    lengths = clips.lengths[list(select)]
    if lengths.max(initial=0) > run.max_len:
      raise ValueError(f'run {run.workdir}: clips of {lengths.max()} rows exceed its max_len '
                       f'{run.max_len}.')
    out = []
    for rows, padded in self._chunks(len(select)):
      idx = [select[k] for k in padded]
      mask = (np.arange(run.max_len)[None] < clips.lengths[idx][:, None]).astype(np.float32)
      noise = self._noise(jax.random.key(seed), jnp.asarray(clips.indices[idx], jnp.int32),
                          jnp.asarray([sample_ids[k] for k in padded], jnp.int32))
      text, person = self._texts([clips.texts[i] for i in idx], [clips.person1[i] for i in idx],
                                 [clips.person2[i] for i in idx])
      x0 = self._sample(run.params, noise, jnp.asarray(mask), text, person)
      x0 = run.artifacts.denormalise(np.asarray(jax.device_get(x0)))
      out.extend(x0[k, :clips.lengths[idx[k]]] for k in range(len(rows)))
      progress(rows[-1] + 1)
    return Motions(np.concatenate(out).astype(np.float32), lengths.astype(np.int32))

  def has_distance_predictor(self, clips: ground_truth.Clips) -> bool:
    """Whether the model returns ``part_distances`` (FineDual with its distance predictor)."""
    run, b, t = self.run, 1, self.run.max_len
    text, person = self._texts(clips.texts[:1], clips.person1[:1], clips.person2[:1])
    aux = jax.eval_shape(self._apply, run.params,
                         jnp.zeros((b, t, 2, run.artifacts.representation.feature_dim)),
                         jnp.zeros((b,), jnp.int32), jnp.ones((b, t)), text, person)
    return 'part_distances' in aux

  def distance_errors(self, clips: ground_truth.Clips, seed: int,
                      timesteps: Sequence[int] = DISTANCE_TIMESTEPS) -> dict[int, float]:
    """Per timestep t: the distance predictor's mean absolute error (metres) on the ground truth.

    The ground-truth motion (normalised with the run's statistics, padded to the run's
    max_len) is noised to t with noise keyed on (seed, salt, index, t), given with its own
    texts and no condition dropped; the target is ``body_parts.part_distances`` of its joint
    positions (person 1's parts to person 2's), what the predictor is trained to regress.
    The error is ``metrics.distance_prediction_error``: |predicted - true| averaged over the
    valid frames' K x K part pairs of all clips.
    """
    run = self.run
    positions = run.artifacts.representation.positions(clips.features)  # [N, T, 2, 22, 3]
    target = body_parts.part_distances(positions[:, :, 0], positions[:, :, 1])
    frames = clips.features.shape[1]
    base = jax.random.fold_in(jax.random.key(seed), _DISTANCE_NOISE_SALT)
    errors = {}
    for t in timesteps:
      predicted = []
      for rows, padded in self._chunks(len(clips)):
        x0 = np.zeros((len(padded), run.max_len) + clips.features.shape[2:], np.float32)
        x0[:, :frames] = run.artifacts.normalise(clips.features[padded])
        mask = (np.arange(run.max_len)[None] < clips.lengths[padded][:, None]).astype(np.float32)
        noise = self._noise(base, jnp.asarray(clips.indices[padded], jnp.int32),
                            jnp.full((len(padded),), t, jnp.int32))
        steps = jnp.full((len(padded),), t, jnp.int32)
        x_t = q_sample(run.schedule, jnp.asarray(x0), steps, noise) * mask[:, :, None, None]
        text, person = self._texts([clips.texts[i] for i in padded],
                                   [clips.person1[i] for i in padded],
                                   [clips.person2[i] for i in padded])
        aux = self._apply(run.params, x_t, steps, jnp.asarray(mask), text, person)
        predicted.append(np.asarray(aux['part_distances'])[:len(rows), :frames])
      errors[t] = metrics.distance_prediction_error(np.concatenate(predicted), target,
                                                    clips.mask)
    return errors


class Cache:
  """``root/<name>.npz`` files of ``Motions`` tagged with a fingerprint (a JSON object)."""

  def __init__(self, root: pathlib.Path):
    self.root = root

  def path(self, name: str) -> pathlib.Path:
    return self.root / f'{name}.npz'

  def load(self, name: str, fingerprint: dict) -> Motions | None:
    path = self.path(name)
    if not path.is_file():
      return None
    try:
      with np.load(path, allow_pickle=False) as data:
        if json.loads(str(data['fingerprint'])) != json.loads(json.dumps(fingerprint)):
          return None
        return Motions(data['rows'].astype(np.float32), data['lengths'])
    except (OSError, ValueError, KeyError):  # Unreadable (e.g. a foreign file): regenerate.
      return None

  def save(self, name: str, fingerprint: dict, motions: Motions, dtype=np.float32) -> pathlib.Path:
    path = self.path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp.npz')
    np.savez(tmp, rows=motions.rows.astype(dtype), lengths=motions.lengths,
             fingerprint=np.asarray(json.dumps(fingerprint, sort_keys=True)))
    os.replace(tmp, path)
    return path
