"""The InterHuman evaluation metrics, on evaluator embeddings and on joint positions.

Embedding metrics follow InterGen's reference protocol (github.com/tr3e/InterGen:
``utils/metrics.py``, ``tools/eval.py`` and ``datasets/evaluator.py`` after the 2023-11 fix of
issue #10). What that code does, and so what this module does:

* Text and motion embeddings are compared in batches of 96 pairs from a shuffled loader that
  drops the incomplete last batch (``batch_size = 96``, ``drop_last=True``). The pre-fix
  loader used 3 x 96, consistent with issue #10's top-1 R-Precision of 0.25 instead of ~0.45.
* R-Precision top-1/2/3: per batch, the 96 x 96 Euclidean distances from each text to every
  motion; a hit at k where a text's own motion is among its k nearest. MM Dist: the mean
  distance between matched pairs, over the same batches. Neither scales the embeddings.
* FID and Diversity multiply the embeddings by ``emb_scale = 6`` first; Diversity then halves
  each pair's difference: ``mean(|6 x_i - 6 x_j| / 2)`` over 300 pairs whose two index lists
  are drawn independently, each without replacement (so a pair may be (i, i)).
* MModality: for each of 100 texts, 30 generated samples; one pair of index lists of 10
  drawn without replacement within the 30, shared by all texts; the mean unscaled distance.
* 20 replications; reported as mean and ``1.96 * std / sqrt(20)`` with NumPy's population std.

FID, Diversity and MModality see whatever embeddings the caller passes: InterGen feeds FID and
Diversity the motion embeddings of the same full batches as R-Precision, so a caller that wants
its numbers should pass those. The interaction metrics on joint positions (distance-prediction
error, interpenetration, foot skating, contact precision/recall) are FineDual's additions
(hyp.: the paper's exact definitions were not available); their thresholds are named constants.

Everything here is NumPy/SciPy in float64: these run once per evaluation, not in a train step.
Randomness is explicit: every sampling metric takes ``rng`` (a ``np.random.Generator`` or a seed).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence, Union

import numpy as np
from scipy import linalg

from finedual_jax.motion import skeleton

ArrayLike = Union[np.ndarray, Sequence]
RngLike = Union[np.random.Generator, int, np.random.SeedSequence]
MetricValue = Union[float, np.ndarray, Mapping[str, float]]
Summary = tuple[Union[np.ndarray, float], Union[np.ndarray, float]]  # (mean, 95% half-width)

# --- InterGen's protocol constants (tools/eval.py `__main__`, utils/metrics.py). ---
EMBEDDING_SCALE = 6.0        # utils/metrics.py `emb_scale`: used by FID and Diversity only.
R_PRECISION_BATCH_SIZE = 96  # tools/eval.py: "batch_size is fixed to 96!!"
R_PRECISION_TOP_K = 3
DIVERSITY_TIMES = 300        # tools/eval.py `diversity_times`
MM_NUM_TEXTS = 100           # tools/eval.py `mm_num_samples`: texts with several generations
MM_NUM_SAMPLES = 30          # tools/eval.py `mm_num_repeats`: generations per text
MM_NUM_TIMES = 10            # tools/eval.py `mm_num_times`: pairs per text
REPLICATIONS = 20            # tools/eval.py `replication_times`
CONFIDENCE_Z = 1.96          # tools/eval.py `get_metric_statistics`: 95% normal interval
FID_EPS = 1e-6               # utils/metrics.py `calculate_frechet_distance(eps=1e-6)`
FID_IMAGINARY_ATOL = 1e-3    # ... its tolerance on the imaginary part of sqrtm's diagonal

# --- Interaction metrics (hyp., FineDual's additions; all lengths in metres). ---
# Capsule radius of each bone, indexed by its child joint 1..21 (bone j joins PARENTS[j] to j).
# Rough adult limb half-thicknesses, slightly under the skin so that touching is not penetrating.
DEFAULT_BONE_RADII = (
    0.07, 0.07,          # pelvis -> left/right hip
    0.11,                # pelvis -> spine1
    0.065, 0.065,        # hip -> knee (thighs)
    0.11,                # spine1 -> spine2
    0.045, 0.045,        # knee -> ankle (shins)
    0.11,                # spine2 -> spine3
    0.035, 0.035,        # ankle -> toe (feet)
    0.05,                # spine3 -> neck
    0.05, 0.05,          # spine3 -> left/right collar
    0.085,               # neck -> head
    0.05, 0.05,          # collar -> shoulder
    0.045, 0.045,        # shoulder -> elbow (upper arms)
    0.035, 0.035,        # elbow -> wrist (forearms)
)
FOOT_JOINTS = skeleton.FOOT_JOINTS  # left ankle, left toe, right ankle, right toe
# Contact heights as in the feature contacts (DESIGN §1.1 step 5): ankle joints sit higher.
FOOT_CONTACT_HEIGHTS = (0.12, 0.05, 0.12, 0.05)
# A foot in contact that moves horizontally faster than this skates. (hyp.) The order of the
# thresholds in use (e.g. 2.5 cm per frame at 20 fps in GMD, Karunratanakul et al. 2023, as we
# recall it), as a speed so that it does not depend on the frame rate.
FOOT_SLIDE_SPEED = 0.5       # m/s
FPS = 30
# Two joints of different persons this close are "in contact": joint centres lie ~5 cm under
# the skin, so skin contact puts them roughly 10 cm apart.
CONTACT_DISTANCE = 0.10

_CHUNK_FRAMES = 1024  # bounds the [frames, 21|22, 21|22, 3] temporaries to ~10 MB


# ----------------------------------------------------------------------------- validation


def _float_array(name: str, x: ArrayLike, ndim: int, layout: str) -> np.ndarray:
  x = np.asarray(x)
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f'{name} must be a real-valued array {layout}, got dtype {x.dtype}.')
  if x.ndim != ndim:
    raise ValueError(f'{name} must have shape {layout}, got shape {x.shape}.')
  return x.astype(np.float64)


def _require_finite(name: str, x: np.ndarray) -> None:
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} contains {int(np.sum(~np.isfinite(x)))} NaN or infinite values; '
                     'check the model outputs (or the padding mask) before evaluating.')


def _embeddings(name: str, x: ArrayLike, min_rows: int = 1) -> np.ndarray:
  x = _float_array(name, x, 2, '[N, D]')
  _require_finite(name, x)
  if x.shape[0] < min_rows:
    raise ValueError(f'{name} has {x.shape[0]} rows; this metric needs at least {min_rows}.')
  return x


def _positions_and_mask(name: str, positions: ArrayLike, mask: ArrayLike,
                        min_frames: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Validates [N, T, 2, 22, 3] positions and a [N, T] mask; zeroes the padded frames."""
  positions = _float_array(name, positions, 5, '[N, T, 2, 22, 3]')
  if positions.shape[2:] != (2, skeleton.NUM_JOINTS, 3):
    raise ValueError(f'{name} must have shape [N, T, 2, 22, 3] (two persons, SMPL body joints, '
                     f'xyz), got {positions.shape}.')
  mask = np.asarray(mask)
  if mask.shape != positions.shape[:2]:
    raise ValueError(f'mask must have shape [N, T] = {positions.shape[:2]} to match {name}, '
                     f'got {mask.shape}.')
  mask = mask.astype(bool)
  if min_frames == 2 and not np.any(mask[:, 1:] & mask[:, :-1]):
    raise ValueError('mask has no two consecutive valid frames; this metric needs at least one '
                     'such pair (it uses velocities).')
  if not np.any(mask):
    raise ValueError('mask has no valid frame; this metric needs at least one.')
  _require_finite(f'{name} (valid frames)', positions[mask])
  return np.where(mask[:, :, None, None, None], positions, 0.0), mask


def _positive(name: str, value: float) -> float:
  if not (np.isfinite(value) and value > 0):
    raise ValueError(f'{name} must be a positive number, got {value}.')
  return float(value)


# ----------------------------------------------------------------------------- embeddings


def euclidean_distance_matrix(a: ArrayLike, b: ArrayLike) -> np.ndarray:
  """Pairwise distances between two embedding sets.

  Args:
    a: [N1, D].
    b: [N2, D].

  Returns:
    [N1, N2] float64, entry (i, j) = |a_i - b_j|. Uses |a|^2 + |b|^2 - 2 a.b like InterGen,
    but clamps the rounding negatives (InterGen's would give NaN for near-identical rows).
  """
  a = _embeddings('a', a)
  b = _embeddings('b', b)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f'a and b must have the same embedding size D, got {a.shape} and {b.shape}.')
  squared = np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2.0 * a @ b.T
  return np.sqrt(np.maximum(squared, 0.0))


def _matched_batches(text_embeddings: ArrayLike, motion_embeddings: ArrayLike, batch_size: int,
                     rng: RngLike | None) -> tuple[np.ndarray, np.ndarray]:
  """[N, D] pairs -> [B, batch_size, D] text and motion batches, incomplete batch dropped."""
  text = _embeddings('text_embeddings', text_embeddings)
  motion = _embeddings('motion_embeddings', motion_embeddings)
  if text.shape != motion.shape:
    raise ValueError('text_embeddings and motion_embeddings must be matched pairs of the same '
                     f'shape [N, D], got {text.shape} and {motion.shape}.')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  n, d = text.shape
  if n < batch_size:
    raise ValueError(f'text_embeddings has {n} pairs, fewer than one batch of batch_size='
                     f'{batch_size}; the protocol drops incomplete batches, so pass at least '
                     f'{batch_size} pairs (or a smaller batch_size, which changes the metric).')
  order = np.arange(n) if rng is None else np.random.default_rng(rng).permutation(n)
  keep = order[:(n // batch_size) * batch_size]
  return (text[keep].reshape(-1, batch_size, d), motion[keep].reshape(-1, batch_size, d))


def _r_precision_of_batches(text: np.ndarray, motion: np.ndarray, top_k: int) -> np.ndarray:
  batch_size = text.shape[1]
  if not 1 <= top_k <= batch_size:
    raise ValueError(f'top_k must be in [1, batch_size={batch_size}], got {top_k}.')
  hits = np.zeros(top_k)
  for t, m in zip(text, motion):
    order = np.argsort(euclidean_distance_matrix(t, m), axis=1, kind='stable')
    rank = np.argmax(order == np.arange(batch_size)[:, None], axis=1)  # 0 = nearest
    hits += np.mean(rank[:, None] < np.arange(1, top_k + 1)[None, :], axis=0)
  return hits / text.shape[0]


def r_precision(text_embeddings: ArrayLike, motion_embeddings: ArrayLike, *,
                batch_size: int = R_PRECISION_BATCH_SIZE, top_k: int = R_PRECISION_TOP_K,
                rng: RngLike | None = None) -> np.ndarray:
  """Text-to-motion retrieval accuracy within batches (InterGen's R-Precision).

  Args:
    text_embeddings: [N, D]; row i describes motion i.
    motion_embeddings: [N, D].
    batch_size: pairs per retrieval pool; the last ``N % batch_size`` pairs are dropped.
    top_k: largest k reported.
    rng: if given, the pairs are shuffled before batching (InterGen's loader shuffles, so
      which pairs share a pool, and which are dropped, changes per replication).

  Returns:
    [top_k]: entry k-1 is the fraction of texts whose own motion is among their k nearest
    motions in the batch, averaged over batches. Ties rank the lower index first.
  """
  text, motion = _matched_batches(text_embeddings, motion_embeddings, batch_size, rng)
  return _r_precision_of_batches(text, motion, top_k)


def mm_dist(text_embeddings: ArrayLike, motion_embeddings: ArrayLike, *,
            batch_size: int = R_PRECISION_BATCH_SIZE, rng: RngLike | None = None) -> float:
  """Multimodal distance: mean |text_i - motion_i| over the pairs ``r_precision`` keeps."""
  text, motion = _matched_batches(text_embeddings, motion_embeddings, batch_size, rng)
  return float(np.mean(np.linalg.norm(text - motion, axis=-1)))


def matching_scores(text_embeddings: ArrayLike, motion_embeddings: ArrayLike, *,
                    batch_size: int = R_PRECISION_BATCH_SIZE, top_k: int = R_PRECISION_TOP_K,
                    rng: RngLike | None = None) -> dict[str, float]:
  """R-Precision top-1..k and MM Dist on one shuffle: {'r_precision_top1', ..., 'mm_dist'}."""
  text, motion = _matched_batches(text_embeddings, motion_embeddings, batch_size, rng)
  scores = {f'r_precision_top{k + 1}': float(v)
            for k, v in enumerate(_r_precision_of_batches(text, motion, top_k))}
  scores['mm_dist'] = float(np.mean(np.linalg.norm(text - motion, axis=-1)))
  return scores


def activation_statistics(embeddings: ArrayLike,
                          scale: float = EMBEDDING_SCALE) -> tuple[np.ndarray, np.ndarray]:
  """[N, D] embeddings -> mean [D] and unbiased covariance [D, D] of ``scale * embeddings``."""
  x = _embeddings('embeddings', embeddings, min_rows=2) * scale
  return np.mean(x, axis=0), np.cov(x, rowvar=False)


def _has_large_imaginary_part(m: np.ndarray) -> bool:
  return np.iscomplexobj(m) and not np.allclose(np.diagonal(m).imag, 0.0, atol=FID_IMAGINARY_ATOL)


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike,
                     eps: float = FID_EPS) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), the square root by
  ``scipy.linalg.sqrtm``. When the product is near singular (few samples for D = 512) sqrtm
  can return non-finite values or a complex result with large imaginary parts; then, as in the
  Inception-FID code InterGen copies, both covariances get ``eps * I`` added and the root is
  recomputed. (InterGen retries only on non-finite values and raises on large imaginary parts;
  this also retries on the latter and raises only if the retry does not fix it.)
  """
  mu1, mu2 = _float_array('mu1', mu1, 1, '[D]'), _float_array('mu2', mu2, 1, '[D]')
  sigma1 = _float_array('sigma1', sigma1, 2, '[D, D]')
  sigma2 = _float_array('sigma2', sigma2, 2, '[D, D]')
  d = mu1.shape[0]
  for name, value, shape in (('mu2', mu2, (d,)), ('sigma1', sigma1, (d, d)),
                             ('sigma2', sigma2, (d, d))):
    if value.shape != shape:
      raise ValueError(f'{name} must have shape {shape} to match mu1 {mu1.shape}, got '
                       f'{value.shape}.')
    _require_finite(name, value)
  _require_finite('mu1', mu1)

  covmean = linalg.sqrtm(sigma1 @ sigma2)
  if not np.all(np.isfinite(covmean)) or _has_large_imaginary_part(covmean):
    offset = eps * np.eye(d)
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if _has_large_imaginary_part(covmean):
    raise ValueError('The covariance product has no usable real square root (imaginary part '
                     f'{np.max(np.abs(covmean.imag)):.3g}); evaluate on more samples than '
                     f'embedding dimensions ({d}).')
  covmean = np.real(covmean)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid(embeddings_a: ArrayLike, embeddings_b: ArrayLike, *,
        scale: float = EMBEDDING_SCALE) -> float:
  """FID between two embedding sets [Na, D], [Nb, D] (each scaled by ``scale`` first)."""
  a = _embeddings('embeddings_a', embeddings_a, min_rows=2)
  b = _embeddings('embeddings_b', embeddings_b, min_rows=2)
  if a.shape[1] != b.shape[1]:
    raise ValueError('embeddings_a and embeddings_b must have the same embedding size D, got '
                     f'{a.shape} and {b.shape}.')
  return frechet_distance(*activation_statistics(a, scale), *activation_statistics(b, scale))


def diversity(embeddings: ArrayLike, rng: RngLike, *, times: int = DIVERSITY_TIMES,
              scale: float = EMBEDDING_SCALE) -> float:
  """Mean of |scale * (x_i - x_j)| / 2 over ``times`` random pairs of rows of [N, D] embeddings.

  The first and second indices are two independent draws of ``times`` rows without
  replacement, as InterGen draws them; it also requires N > times, and so does this.
  """
  x = _embeddings('embeddings', embeddings)
  n = x.shape[0]
  if n <= times:
    raise ValueError(f'embeddings has {n} rows; Diversity over times={times} pairs needs more '
                     f'than {times} (InterGen asserts N > diversity_times).')
  rng = np.random.default_rng(rng)
  first = rng.choice(n, times, replace=False)
  second = rng.choice(n, times, replace=False)
  return float(np.mean(np.linalg.norm(scale * (x[first] - x[second]) / 2.0, axis=1)))


def multimodality(embeddings: ArrayLike, rng: RngLike, *, times: int = MM_NUM_TIMES) -> float:
  """Mean distance between ``times`` random pairs of generations of the same text.

  Args:
    embeddings: [num_texts, num_samples, D] motion embeddings, num_samples generations per
      text (the protocol: 100 x 30). Unscaled, as in InterGen.
    rng: the pair indices, one list pair shared by all texts (as InterGen draws them).
    times: pairs per text; num_samples must exceed it (InterGen's assertion).

  Returns:
    The mean over texts and pairs.
  """
  x = _float_array('embeddings', embeddings, 3, '[num_texts, num_samples, D]')
  _require_finite('embeddings', x)
  num_samples = x.shape[1]
  if num_samples <= times:
    raise ValueError(f'embeddings has {num_samples} samples per text; MModality over '
                     f'times={times} pairs needs more than {times}.')
  rng = np.random.default_rng(rng)
  first = rng.choice(num_samples, times, replace=False)
  second = rng.choice(num_samples, times, replace=False)
  return float(np.mean(np.linalg.norm(x[:, first] - x[:, second], axis=-1)))


# ----------------------------------------------------------------------------- replications


def confidence_interval(values: ArrayLike) -> Summary:
  """[R, ...] per-replication values -> (mean, 95% half-width = 1.96 * std / sqrt(R)).

  std is NumPy's population std (ddof=0), as in InterGen's ``get_metric_statistics``.
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim < 1 or values.shape[0] < 1:
    raise ValueError(f'values must be [R, ...] with R >= 1 replications, got shape '
                     f'{values.shape}.')
  mean = np.mean(values, axis=0)
  half = CONFIDENCE_Z * np.std(values, axis=0) / np.sqrt(values.shape[0])
  if values.ndim == 1:
    return float(mean), float(half)
  return mean, half



def replicate(metric_fn: Callable[[np.random.Generator], MetricValue], *,
              replications: int = REPLICATIONS, seed: int = 0
              ) -> Union[Summary, dict[str, Summary]]:
  """Runs ``metric_fn(rng)`` ``replications`` times and summarises it like InterGen.

  Replication r gets its own generator from ``np.random.SeedSequence(seed).spawn``, so the
  result is a function of ``seed`` alone.

  Returns:
    (mean, half_width) of the values (scalars or arrays), or, where ``metric_fn`` returns a
    mapping of named scalars, {name: (mean, half_width)}.
  """
  if replications < 1:
    raise ValueError(f'replications must be >= 1, got {replications}.')
  children = np.random.SeedSequence(seed).spawn(replications)
  results = [metric_fn(np.random.default_rng(child)) for child in children]
  if isinstance(results[0], Mapping):
    return {name: confidence_interval([r[name] for r in results]) for name in results[0]}
  return confidence_interval(results)


# ----------------------------------------------------------------------------- interaction


def distance_prediction_error(predicted: ArrayLike, target: ArrayLike, mask: ArrayLike) -> float:
  """Mean absolute error of predicted inter-person part distances over valid frames.

  Args:
    predicted: [N, T, K, K] predicted part-to-part distances (metres).
    target: [N, T, K, K] the truth, e.g. ``body_parts.part_distances(pos[..., 0, :, :],
      pos[..., 1, :, :])`` of the ground-truth joint positions.
    mask: [N, T] valid frames.

  Returns:
    The mean of |predicted - target| over all valid frames' K x K entries, pooled.
  """
  predicted = _float_array('predicted', predicted, 4, '[N, T, K, K]')
  target = _float_array('target', target, 4, '[N, T, K, K]')
  if predicted.shape != target.shape:
    raise ValueError(f'predicted and target must have the same shape, got {predicted.shape} '
                     f'and {target.shape}.')
  mask = np.asarray(mask)
  if mask.shape != predicted.shape[:2]:
    raise ValueError(f'mask must have shape [N, T] = {predicted.shape[:2]}, got {mask.shape}.')
  mask = mask.astype(bool)
  if not np.any(mask):
    raise ValueError('mask has no valid frame; this metric needs at least one.')
  _require_finite('predicted (valid frames)', predicted[mask])
  _require_finite('target (valid frames)', target[mask])
  return float(np.mean(np.abs(predicted[mask] - target[mask])))


def segment_distance(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray, q2: np.ndarray) -> np.ndarray:
  """Closest distance between 3D segments [p1, q1] and [p2, q2], broadcast over [..., 3].

  Clamped line-line closest points (Ericson, Real-Time Collision Detection, §5.1.9), with
  zero-length segments handled as points.
  """
  tiny = 1e-12
  d1, d2, r = q1 - p1, q2 - p2, p1 - p2
  a = np.sum(d1 * d1, axis=-1)
  e = np.sum(d2 * d2, axis=-1)
  b = np.sum(d1 * d2, axis=-1)
  c = np.sum(d1 * r, axis=-1)
  f = np.sum(d2 * r, axis=-1)
  a_ok, e_ok = a > tiny, e > tiny
  a_safe, e_safe = np.where(a_ok, a, 1.0), np.where(e_ok, e, 1.0)
  denom = a * e - b * b
  # Parallel segments (denom = 0): any s works; s = 0 then the clamping below finds t.
  s = np.where(denom > tiny * a_safe * e_safe,
               np.clip((b * f - c * e) / np.where(denom > 0, denom, 1.0), 0.0, 1.0), 0.0)
  t = (b * s + f) / e_safe
  # t outside [0, 1]: clamp it and recompute s for the clamped t.
  s = np.where(t < 0.0, np.clip(-c / a_safe, 0.0, 1.0),
               np.where(t > 1.0, np.clip((b - c) / a_safe, 0.0, 1.0), s))
  t = np.clip(t, 0.0, 1.0)
  # Degenerate segments: a point against a segment (or a point).
  s = np.where(a_ok, s, 0.0)
  t = np.where(e_ok, np.where(a_ok, t, np.clip(f / e_safe, 0.0, 1.0)), 0.0)
  s = np.where(a_ok & ~e_ok, np.clip(-c / a_safe, 0.0, 1.0), s)
  closest = (p1 + s[..., None] * d1) - (p2 + t[..., None] * d2)
  return np.linalg.norm(closest, axis=-1)


def _bone_radii(bone_radii: ArrayLike) -> np.ndarray:
  radii = np.asarray(bone_radii, dtype=np.float64)
  if radii.shape != (skeleton.NUM_JOINTS - 1,) or np.any(~np.isfinite(radii)) or np.any(radii < 0):
    raise ValueError('bone_radii must be 21 non-negative radii in metres, one per bone indexed '
                     f'by its child joint 1..21 (see DEFAULT_BONE_RADII), got {radii}.')
  return radii


def penetration_depths(positions: ArrayLike, mask: ArrayLike, *,
                       bone_radii: ArrayLike = DEFAULT_BONE_RADII) -> np.ndarray:
  """Per valid frame, the deepest overlap of a capsule of person 1 with one of person 2.

  Args:
    positions: [N, T, 2, 22, 3] joint positions (metres).
    mask: [N, T] valid frames.
    bone_radii: [21] capsule radius of the bone to each child joint 1..21.

  Returns:
    [F] for the F valid frames in (n, t) order: max over bone pairs (i, j) of
    r_i + r_j - dist(bone_i of person 1, bone_j of person 2), floored at 0.
  """
  positions, mask = _positions_and_mask('positions', positions, mask)
  radii = _bone_radii(bone_radii)
  pos = positions[mask]                                      # [F, 2, 22, 3]
  starts, ends = pos[:, :, list(skeleton.PARENTS[1:])], pos[:, :, 1:]  # [F, 2, 21, 3]
  reach = radii[:, None] + radii[None, :]                    # [21, 21]
  depths = np.empty(pos.shape[0])
  for lo in range(0, pos.shape[0], _CHUNK_FRAMES):
    sl = slice(lo, lo + _CHUNK_FRAMES)
    dist = segment_distance(starts[sl, 0, :, None], ends[sl, 0, :, None],
                            starts[sl, 1, None, :], ends[sl, 1, None, :])  # [f, 21, 21]
    depths[sl] = np.max(reach - dist, axis=(1, 2))
  return np.maximum(depths, 0.0)


def interpenetration(positions: ArrayLike, mask: ArrayLike, *,
                     bone_radii: ArrayLike = DEFAULT_BONE_RADII) -> dict[str, float]:
  """Body interpenetration between the two persons with a capsule-per-bone proxy.

  Returns:
    'penetration_rate': fraction of valid frames where some pair of capsules overlaps;
    'penetration_depth': mean over valid frames of the frame's deepest overlap (0 where none),
    in metres. Self-penetration of a person is not counted.
  """
  depths = penetration_depths(positions, mask, bone_radii=bone_radii)
  return {'penetration_rate': float(np.mean(depths > 0.0)),
          'penetration_depth': float(np.mean(depths))}


def foot_skating(positions: ArrayLike, mask: ArrayLike, *, fps: float = FPS,
                 contact_heights: Sequence[float] = FOOT_CONTACT_HEIGHTS,
                 slide_speed: float = FOOT_SLIDE_SPEED) -> float:
  """Fraction of valid person-frames in which a planted foot slides.

  A foot joint (``FOOT_JOINTS``) skates between frames t and t+1 when its height (y; y up,
  floor at 0 as in the canonical frame) is below its ``contact_heights`` entry at both frames
  while its horizontal (xz) speed exceeds ``slide_speed`` m/s. A person-frame skates when any
  of its four foot joints does; the rate is over the person-frames whose t and t+1 are valid.
  """
  positions, mask = _positions_and_mask('positions', positions, mask, min_frames=2)
  fps, slide_speed = _positive('fps', fps), _positive('slide_speed', slide_speed)
  heights = np.asarray(contact_heights, dtype=np.float64)
  if heights.shape != (len(FOOT_JOINTS),):
    raise ValueError(f'contact_heights must give {len(FOOT_JOINTS)} heights, one per foot '
                     f'joint {FOOT_JOINTS}, got {contact_heights}.')
  feet = positions[:, :, :, list(FOOT_JOINTS)]                   # [N, T, 2, 4, 3]
  step = feet[:, 1:] - feet[:, :-1]
  speed = np.hypot(step[..., 0], step[..., 2]) * fps            # [N, T-1, 2, 4]
  low = feet[..., 1] < heights
  planted = low[:, 1:] & low[:, :-1]
  skating = np.any(planted & (speed > slide_speed), axis=-1)    # [N, T-1, 2]
  valid = mask[:, 1:] & mask[:, :-1]                             # [N, T-1]
  return float(np.sum(skating & valid[..., None]) / (2.0 * np.sum(valid)))


def contacts(positions: np.ndarray, threshold: float = CONTACT_DISTANCE) -> np.ndarray:
  """[F, 2, 22, 3] -> [F, 22, 22]: is joint i of person 1 within ``threshold`` of joint j of 2?"""
  out = np.empty((positions.shape[0], skeleton.NUM_JOINTS, skeleton.NUM_JOINTS), dtype=bool)
  for lo in range(0, positions.shape[0], _CHUNK_FRAMES):
    chunk = positions[lo:lo + _CHUNK_FRAMES]
    diff = chunk[:, 0, :, None, :] - chunk[:, 1, None, :, :]
    out[lo:lo + _CHUNK_FRAMES] = np.linalg.norm(diff, axis=-1) < threshold
  return out


def contact_precision_recall(generated: ArrayLike, ground_truth: ArrayLike, mask: ArrayLike, *,
                             threshold: float = CONTACT_DISTANCE) -> dict[str, float]:
  """Precision/recall of generated inter-person joint contacts against the ground truth's.

  Args:
    generated: [N, T, 2, 22, 3] generated joint positions, frame-aligned with
    ground_truth: [N, T, 2, 22, 3] the reference motions.
    mask: [N, T] valid frames (of both).
    threshold: joint-pair distance below which two joints touch (metres).

  Returns:
    'contact_precision', 'contact_recall', 'contact_f1', pooled over all valid frames' 22 x 22
    joint pairs; NaN where undefined (no generated contact for precision, none in the
    ground truth for recall, either for F1).
  """
  generated, mask = _positions_and_mask('generated', generated, mask)
  ground_truth, _ = _positions_and_mask('ground_truth', ground_truth, mask)
  threshold = _positive('threshold', threshold)
  pred, true = contacts(generated[mask], threshold), contacts(ground_truth[mask], threshold)
  tp = int(np.sum(pred & true))
  predicted, actual = int(np.sum(pred)), int(np.sum(true))
  precision = tp / predicted if predicted else math.nan
  recall = tp / actual if actual else math.nan
  f1 = (2 * precision * recall / (precision + recall) if precision + recall > 0
        else (0.0 if predicted and actual else math.nan))
  return {'contact_precision': precision, 'contact_recall': recall, 'contact_f1': f1}
