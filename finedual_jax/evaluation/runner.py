"""The evaluation runner: ground truth, generation per run and replication, and every metric.

Per replication r (seed r): each run generates one motion per reference clip (its texts, its
length) and, for the first ``mm_replications``, ``mm_samples`` motions for each of ``mm_texts``
clips; the evaluator embeds motions and captions; then (``metrics``):

* R-Precision top-1/2/3 and MM Dist: the clips shuffled by the replication's generator and cut
  into pools of 96 (the last incomplete pool dropped); FID of the kept motions' embeddings
  against all ground-truth motions; Diversity over 300 pairs of the kept motions; MModality.
  The shuffle is the same for the ground truth and every run, so their numbers are paired.
* on joint positions: interpenetration, foot skating, and contact precision/recall/F1 against
  the frame-aligned ground truth; for models that predict part distances, the distance
  prediction error (``generated.Sampler.distance_errors``), its mean over
  ``DISTANCE_TIMESTEPS`` and each timestep's.

Fewer clips than the protocol needs (a smoke run; the synthetic set) shrink the pool to N, the
Diversity pairs to N - 1 and the MModality pairs to mm_samples - 1; ``protocol['deviations']``
lists each such change, since the numbers are then not comparable with published ones.
Each metric is summarised as mean and 95% interval over replications (``confidence_interval``;
replications where a metric is undefined, e.g. precision without any contact, are left out and
counted).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from finedual_jax.data import pipeline
from finedual_jax.data import representation as representation_lib
from finedual_jax.evaluation import evaluator_files
from finedual_jax.evaluation import generated
from finedual_jax.evaluation import ground_truth
from finedual_jax.evaluation import metrics

GROUND_TRUTH = 'ground truth'
EMBEDDING_METRICS = ('r_precision_top1', 'r_precision_top2', 'r_precision_top3', 'fid',
                     'mm_dist', 'diversity', 'multimodality')
INTERACTION_METRICS = ('penetration_rate', 'penetration_depth', 'foot_skating',
                       'contact_precision', 'contact_recall', 'contact_f1',
                       'distance_prediction_error')


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The protocol's sizes, shrunk where there are too few clips (then listed in deviations)."""
  pool_size: int
  diversity_times: int
  mm_times: int
  deviations: tuple[str, ...]

  @classmethod
  def for_sizes(cls, num_clips: int, mm_samples: int) -> 'Protocol':
    deviations = []
    pool = min(metrics.R_PRECISION_BATCH_SIZE, num_clips)
    if pool < metrics.R_PRECISION_BATCH_SIZE:
      deviations.append(f'R-Precision pool {pool} instead of {metrics.R_PRECISION_BATCH_SIZE} '
                        f'({num_clips} clips)')
    times = min(metrics.DIVERSITY_TIMES, (num_clips // pool) * pool - 1)
    if times < metrics.DIVERSITY_TIMES:
      deviations.append(f'Diversity over {times} pairs instead of {metrics.DIVERSITY_TIMES}')
    mm_times = min(metrics.MM_NUM_TIMES, mm_samples - 1)
    if mm_times < metrics.MM_NUM_TIMES:
      deviations.append(f'MModality over {mm_times} pairs per text instead of '
                        f'{metrics.MM_NUM_TIMES}')
    return cls(pool, times, mm_times, tuple(deviations))


@dataclasses.dataclass
class Reference:
  """The ground truth, embedded once: what every run is compared with."""
  clips: ground_truth.Clips
  evaluator: evaluator_files.Evaluator
  representation: representation_lib.Representation
  protocol: Protocol
  seed: int
  text_embeddings: np.ndarray     # [N, E]
  motion_embeddings: np.ndarray   # [N, E]
  positions: np.ndarray           # [N, T, 2, 22, 3]
  mm_clips: np.ndarray            # [mm_texts] positions in clips of the MModality texts.

  @property
  def motions(self) -> generated.Motions:
    return generated.Motions.from_padded(self.clips.features, self.clips.lengths)

  def rng(self, replication: int, stream: int = 0) -> np.random.Generator:
    """The replication's generator, shared by the ground truth and every run."""
    return np.random.default_rng([self.seed, replication, stream])


def make_reference(clips: ground_truth.Clips, evaluator: evaluator_files.Evaluator, *,
                   mm_texts: int, mm_samples: int, seed: int = 0) -> Reference:
  if len(clips) < 2:
    raise ValueError(f'{clips.dataset_dir} split {clips.split!r}: {len(clips)} clip; the '
                     'metrics need at least 2.')
  if mm_samples < 2 or mm_texts < 1:
    raise ValueError(f'MModality needs mm_texts >= 1 and mm_samples >= 2, found {mm_texts} and '
                     f'{mm_samples}.')
  protocol = Protocol.for_sizes(len(clips), mm_samples)
  mm_clips = np.sort(np.random.default_rng([seed, 7]).permutation(len(clips))[:mm_texts])
  if len(mm_clips) < mm_texts:
    protocol = dataclasses.replace(protocol, deviations=protocol.deviations + (
        f'MModality over {len(mm_clips)} texts instead of {mm_texts}',))
  representation = pipeline.representation_of(clips.dataset_dir)
  return Reference(clips, evaluator, representation, protocol, seed,
                   evaluator.embed_texts(clips.texts),
                   evaluator.embed_motions(clips.features, clips.mask),
                   representation.positions(clips.features), mm_clips)


def _safe(fn: Callable[[], float]) -> float:
  """A metric undefined for these inputs (e.g. FID with too few clips) is NaN, not a crash."""
  try:
    return float(fn())
  except ValueError:
    return math.nan


def embedding_scores(reference: Reference, motion_embeddings: np.ndarray,
                     replication: int) -> dict[str, float]:
  """R-Precision, MM Dist, FID and Diversity of one replication's motion embeddings [N, E]."""
  protocol, n = reference.protocol, len(motion_embeddings)
  rng = reference.rng(replication)
  keep = rng.permutation(n)[:(n // protocol.pool_size) * protocol.pool_size]
  scores = metrics.matching_scores(reference.text_embeddings[keep], motion_embeddings[keep],
                                   batch_size=protocol.pool_size)
  scores['fid'] = _safe(lambda: metrics.fid(motion_embeddings[keep],
                                            reference.motion_embeddings))
  scores['diversity'] = _safe(lambda: metrics.diversity(motion_embeddings[keep], rng,
                                                        times=protocol.diversity_times))
  return scores


def position_scores(reference: Reference, motions: generated.Motions,
                    with_contacts: bool = True) -> dict[str, float]:
  """Interpenetration, foot skating and (vs the ground truth) contacts on joint positions."""
  features, mask = motions.padded(reference.clips.features.shape[1])
  positions = reference.representation.positions(features)
  scores = metrics.interpenetration(positions, mask)
  scores['foot_skating'] = _safe(lambda: metrics.foot_skating(positions, mask))
  if with_contacts:
    scores.update(metrics.contact_precision_recall(positions, reference.positions, mask))
  return scores


def embed(reference: Reference, motions: generated.Motions, chunk: int = 512) -> np.ndarray:
  """[N, E] evaluator embeddings, padding ``chunk`` motions at a time (bounded memory)."""
  frames = reference.clips.features.shape[1]
  out = []
  for start in range(0, len(motions), chunk):
    features, mask = motions.padded(frames, range(start, min(start + chunk, len(motions))))
    out.append(reference.evaluator.embed_motions(features, mask))
  return np.concatenate(out)


def score_motions(reference: Reference, motions: generated.Motions, replication: int,
                  with_contacts: bool = True) -> dict[str, float]:
  """Every per-motion metric of one replication's motions (one per reference clip)."""
  if not np.array_equal(motions.lengths, reference.clips.lengths):
    raise ValueError('the motions must match the reference clips one to one, with their lengths.')
  scores = embedding_scores(reference, embed(reference, motions), replication)
  scores.update(position_scores(reference, motions, with_contacts))
  return scores


def multimodality_score(reference: Reference, motions: generated.Motions,
                        replication: int) -> float:
  """MModality of [mm_texts x mm_samples] motions (text-major order)."""
  embeddings = embed(reference, motions)
  embeddings = embeddings.reshape(len(reference.mm_clips), -1, embeddings.shape[-1])
  return metrics.multimodality(embeddings, reference.rng(replication, 1),
                               times=reference.protocol.mm_times)


def summarise(per_replication: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
  """{metric: {'mean', 'interval', 'values', 'replications'}} over the replications' values."""
  names = list(dict.fromkeys(k for r in per_replication for k in r))
  out = {}
  for name in names:
    values = [r.get(name, math.nan) for r in per_replication]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean, interval = metrics.confidence_interval(finite) if finite else (None, None)
    out[name] = {'mean': mean, 'interval': interval, 'replications': len(finite),
                 'values': [v if v is not None and math.isfinite(v) else None for v in values]}
  return out


def ground_truth_row(reference: Reference, replications: int) -> dict[str, dict[str, Any]]:
  """The reference motions scored like a run (no MModality; contacts with itself omitted)."""
  positions = position_scores(reference, reference.motions, with_contacts=False)  # Fixed.
  rows = []
  for r in range(replications):
    scores = embedding_scores(reference, reference.motion_embeddings, r)
    scores.update(positions)
    rows.append(scores)
  return summarise(rows)


def evaluate_run(reference: Reference, run: generated.Run, cache: generated.Cache, *,
                 replications: int, mm_replications: int, mm_samples: int, batch_size: int,
                 cache_dtype: str = 'float32',
                 progress: Callable[[int, str], None] = lambda done, note: None
                 ) -> dict[str, Any]:
  """Generates (or reads from ``cache``) and scores one run; returns its summary and counts."""
  clips = reference.clips
  sampler = generated.Sampler(run, batch_size)
  base = {'workdir': str(run.workdir), 'step': run.step, 'config': run.config_hash(),
          'clips': clips.fingerprint(), **run.settings}
  mm_select = [int(i) for i in reference.mm_clips for _ in range(mm_samples)]
  mm_ids = [j for _ in reference.mm_clips for j in range(mm_samples)]
  done, generated_count, rows, dpe = 0, 0, [], sampler.has_distance_predictor(clips)
  for r in range(replications):
    fingerprint = dict(base, kind='replication', seed=r)
    motions = cache.load(f'rep_{r}', fingerprint)
    if motions is None:
      motions = sampler.sample(clips, list(range(len(clips))), [0] * len(clips), seed=r,
                               progress=lambda k, d=done: progress(d + k, f'replication {r}'))
      cache.save(f'rep_{r}', fingerprint, motions, cache_dtype)
      generated_count += len(motions)
    else:
      progress(done + len(clips), f'replication {r} (cached)')
    done += len(clips)
    scores = score_motions(reference, motions, r)
    if r < mm_replications:
      fingerprint = dict(base, kind='multimodality', seed=r, mm_clips=reference.mm_clips.tolist(),
                         mm_samples=mm_samples)
      mm = cache.load(f'mm_rep_{r}', fingerprint)
      if mm is None:
        mm = sampler.sample(clips, mm_select, mm_ids, seed=r,
                            progress=lambda k, d=done: progress(d + k, f'MModality {r}'))
        cache.save(f'mm_rep_{r}', fingerprint, mm, cache_dtype)
        generated_count += len(mm)
      else:
        progress(done + len(mm_select), f'MModality {r} (cached)')
      done += len(mm_select)
      scores['multimodality'] = _safe(lambda: multimodality_score(reference, mm, r))
    if dpe:
      errors = sampler.distance_errors(clips, seed=r)
      scores['distance_prediction_error'] = float(np.mean(list(errors.values())))
      scores.update({f'distance_prediction_error_t{t}': e for t, e in errors.items()})
    rows.append(scores)
  return {'metrics': summarise(rows), 'generated': generated_count,
          'has_distance_predictor': dpe}


def total_jobs(num_clips: int, replications: int, mm_replications: int, mm_texts: int,
               mm_samples: int) -> int:
  return replications * num_clips + mm_replications * mm_texts * mm_samples
