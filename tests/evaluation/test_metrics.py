"""Evaluation metrics against independent NumPy/SciPy references and hand-made cases."""

import math

import numpy as np
import pytest
from scipy.spatial import distance as sp_distance

from finedual_jax.evaluation import metrics
from finedual_jax.motion import skeleton


def _embeddings(n, d=16, seed=0):
  return np.random.default_rng(seed).normal(size=(n, d))


def _noisy_pairs(n, d=16, noise=1.0, seed=0):
  text = _embeddings(n, d, seed)
  motion = text + noise * np.random.default_rng(seed + 1).normal(size=text.shape)
  return text, motion


# ----------------------------------------------------------------------------- embeddings


def test_euclidean_distance_matrix_matches_cdist():
  a, b = _embeddings(40, 32, 1), _embeddings(25, 32, 2)
  np.testing.assert_allclose(metrics.euclidean_distance_matrix(a, b),
                             sp_distance.cdist(a, b), rtol=1e-9, atol=1e-9)


def test_euclidean_distance_matrix_of_identical_rows_is_zero_not_nan():
  a = _embeddings(5, 512) * 1e3
  d = metrics.euclidean_distance_matrix(a, a)
  assert np.all(np.isfinite(d))
  np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-3)


def _reference_r_precision(text, motion, batch_size, top_k):
  """Loops: per batch, per text, count motions strictly nearer than its own."""
  num_batches = len(text) // batch_size
  per_batch = []
  for b in range(num_batches):
    t = text[b * batch_size:(b + 1) * batch_size]
    m = motion[b * batch_size:(b + 1) * batch_size]
    dist = sp_distance.cdist(t, m)
    hits = np.zeros(top_k)
    for i in range(batch_size):
      nearer = sum(1 for j in range(batch_size) if dist[i, j] < dist[i, i])
      for k in range(top_k):
        hits[k] += nearer <= k
    per_batch.append(hits / batch_size)
  return np.mean(per_batch, axis=0)


def test_r_precision_matches_reference_and_drops_the_remainder():
  text, motion = _noisy_pairs(250, noise=1.2)  # 2 full batches of 96, 58 pairs dropped
  got = metrics.r_precision(text, motion)
  want = _reference_r_precision(text, motion, 96, 3)
  np.testing.assert_allclose(got, want, atol=1e-12)
  assert 0.0 < got[0] < got[1] < got[2] < 1.0
  # The dropped pairs do not matter.
  garbage = np.random.default_rng(9).normal(size=(58, 16))
  np.testing.assert_allclose(
      metrics.r_precision(np.concatenate([text[:192], garbage]),
                          np.concatenate([motion[:192], -garbage])), got)


def test_r_precision_with_rng_shuffles_pairs_before_batching():
  text, motion = _noisy_pairs(200, noise=1.2, seed=3)
  order = np.random.default_rng(7).permutation(200)
  np.testing.assert_allclose(metrics.r_precision(text, motion, rng=7),
                             _reference_r_precision(text[order], motion[order], 96, 3),
                             atol=1e-12)
  np.testing.assert_array_equal(metrics.r_precision(text, motion, rng=7),
                                metrics.r_precision(text, motion, rng=7))


def test_perfectly_matched_embeddings_have_r_precision_one():
  text = _embeddings(192, 512, 4)
  np.testing.assert_array_equal(metrics.r_precision(text, text.astype(np.float32)), [1, 1, 1])


def test_mm_dist_matches_loop_over_kept_pairs():
  text, motion = _noisy_pairs(100, noise=0.5, seed=5)
  want = np.mean([math.dist(text[i], motion[i]) for i in range(96)])
  assert metrics.mm_dist(text, motion) == pytest.approx(want, rel=1e-12)
  scores = metrics.matching_scores(text, motion)
  assert scores['mm_dist'] == pytest.approx(want, rel=1e-12)
  np.testing.assert_allclose([scores[f'r_precision_top{k}'] for k in (1, 2, 3)],
                             _reference_r_precision(text, motion, 96, 3), atol=1e-12)


def _reference_fid(x, y, scale):
  """Covariances by hand; tr sqrt(S1 S2) from the eigenvalues of S1^1/2 S2 S1^1/2."""
  x, y = scale * x, scale * y

  def stats(z):
    mu = z.mean(axis=0)
    centred = z - mu
    return mu, centred.T @ centred / (len(z) - 1)

  (mu1, s1), (mu2, s2) = stats(x), stats(y)
  w, v = np.linalg.eigh(s1)
  root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
  inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
  return (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
          - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


@pytest.mark.parametrize('scale', [1.0, metrics.EMBEDDING_SCALE])
def test_fid_matches_reference(scale):
  rng = np.random.default_rng(6)
  x = rng.normal(size=(300, 24))
  y = rng.normal(size=(260, 24)) @ rng.normal(size=(24, 24)) * 0.3 + 0.2
  assert metrics.fid(x, y, scale=scale) == pytest.approx(_reference_fid(x, y, scale), rel=1e-8)


def test_fid_of_identical_sets_is_zero_and_of_a_shift_is_the_squared_shift():
  x = _embeddings(600, 64, 8)
  assert abs(metrics.fid(x, x)) < 1e-6
  shift = np.linspace(-0.5, 0.5, 64)
  assert metrics.fid(x, x + shift, scale=1.0) == pytest.approx(np.sum(shift ** 2), rel=1e-6)
  assert metrics.fid(x, x + shift) == pytest.approx(36.0 * np.sum(shift ** 2), rel=1e-6)


def test_fid_on_512_d_embeddings_matches_reference():
  rng = np.random.default_rng(10)
  x, y = rng.normal(size=(700, 512)), rng.normal(size=(700, 512)) * 1.1 + 0.05
  assert metrics.fid(x, y) == pytest.approx(_reference_fid(x, y, 6.0), rel=1e-6)


def test_fid_with_fewer_samples_than_dimensions_is_finite():
  rng = np.random.default_rng(11)
  x, y = rng.normal(size=(20, 48)), rng.normal(size=(20, 48))
  value = metrics.fid(x, y)
  assert np.isfinite(value)
  assert value == pytest.approx(_reference_fid(x, y, 6.0), rel=1e-6)


def test_frechet_distance_retries_with_eps_when_sqrtm_fails(monkeypatch):
  real_sqrtm = metrics.linalg.sqrtm
  seen = []

  def flaky_sqrtm(m):
    seen.append(m)
    return np.full_like(m, np.nan) if len(seen) == 1 else real_sqrtm(m)

  monkeypatch.setattr(metrics.linalg, 'sqrtm', flaky_sqrtm)
  s1, s2 = np.diag([1.0, 2.0, 0.0]), np.diag([4.0, 0.5, 3.0])
  got = metrics.frechet_distance(np.zeros(3), s1, np.ones(3), s2)
  offset = metrics.FID_EPS * np.eye(3)
  np.testing.assert_allclose(seen[1], (s1 + offset) @ (s2 + offset))
  want = 3 + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.diag(seen[1])))
  assert got == pytest.approx(want, rel=1e-12)


def test_frechet_distance_drops_small_and_rejects_large_imaginary_parts(monkeypatch):
  eye = np.eye(2)
  monkeypatch.setattr(metrics.linalg, 'sqrtm', lambda m: eye + 1e-6j * eye)
  assert metrics.frechet_distance(np.zeros(2), eye, np.zeros(2), eye) == pytest.approx(0.0)
  monkeypatch.setattr(metrics.linalg, 'sqrtm', lambda m: eye + 0.5j * eye)
  with pytest.raises(ValueError, match='no usable real square root'):
    metrics.frechet_distance(np.zeros(2), eye, np.zeros(2), eye)


def test_frechet_distance_of_known_gaussians():
  # N(0, I) vs N(m, 4 I) in D dims: |m|^2 + D (1 + 4 - 2 * 2).
  d, m = 5, np.arange(5.0)
  assert metrics.frechet_distance(np.zeros(d), np.eye(d), m, 4 * np.eye(d)) == pytest.approx(
      m @ m + d, rel=1e-12)


def test_diversity_matches_loop_with_the_same_draws():
  x = _embeddings(400, 16, 12)
  draws = np.random.default_rng(3)
  first, second = draws.choice(400, 300, replace=False), draws.choice(400, 300, replace=False)
  want = np.mean([math.dist(6 * x[i], 6 * x[j]) / 2 for i, j in zip(first, second)])
  assert metrics.diversity(x, 3) == pytest.approx(want, rel=1e-12)
  assert metrics.diversity(x, np.random.default_rng(3)) == metrics.diversity(x, 3)
  assert metrics.diversity(x, 4) != metrics.diversity(x, 3)


def test_diversity_on_a_line_is_three_times_the_index_gap():
  x = np.zeros((301, 4))
  x[:, 0] = np.arange(301)
  draws = np.random.default_rng(0)
  first, second = draws.choice(301, 300, replace=False), draws.choice(301, 300, replace=False)
  assert metrics.diversity(x, 0) == pytest.approx(3 * np.mean(np.abs(first - second)))
  assert metrics.diversity(np.ones((301, 4)), 0) == 0.0


def test_multimodality_matches_loop_and_is_zero_for_identical_samples():
  x = np.random.default_rng(13).normal(size=(100, 30, 8))
  draws = np.random.default_rng(5)
  first, second = draws.choice(30, 10, replace=False), draws.choice(30, 10, replace=False)
  want = np.mean([math.dist(x[n, i], x[n, j]) for n in range(100)
                  for i, j in zip(first, second)])
  assert metrics.multimodality(x, 5) == pytest.approx(want, rel=1e-12)
  same = np.repeat(x[:, :1], 30, axis=1)
  assert metrics.multimodality(same, 5) == 0.0


# ----------------------------------------------------------------------------- replications


def test_confidence_interval_matches_manual_computation():
  values = np.random.default_rng(14).normal(size=20)
  mean = sum(values) / 20
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / 20)
  got_mean, got_half = metrics.confidence_interval(values)
  assert got_mean == pytest.approx(mean)
  assert got_half == pytest.approx(1.96 * std / math.sqrt(20))


def test_replicate_is_a_function_of_the_seed():
  x = _embeddings(400, 8, 15)

  def metric(rng):
    return metrics.diversity(x, rng)

  children = np.random.SeedSequence(42).spawn(20)
  manual = [metrics.diversity(x, np.random.default_rng(c)) for c in children]
  mean, half = metrics.replicate(metric, seed=42)
  assert (mean, half) == pytest.approx(metrics.confidence_interval(manual))
  assert metrics.replicate(metric, seed=42) == (mean, half)
  assert metrics.replicate(metric, seed=43) != (mean, half)
  assert half > 0


def test_replicate_summarises_arrays_and_named_scalars():
  text, motion = _noisy_pairs(300, noise=1.2, seed=16)
  mean, half = metrics.replicate(lambda rng: metrics.r_precision(text, motion, rng=rng),
                                 replications=4)
  assert mean.shape == half.shape == (3,)
  named = metrics.replicate(lambda rng: metrics.matching_scores(text, motion, rng=rng),
                            replications=4)
  assert set(named) == {'r_precision_top1', 'r_precision_top2', 'r_precision_top3', 'mm_dist'}
  np.testing.assert_allclose(named['r_precision_top2'], (mean[1], half[1]))


# ----------------------------------------------------------------------------- interaction


def test_distance_prediction_error_matches_loop_and_ignores_padding():
  rng = np.random.default_rng(17)
  pred, target = rng.uniform(0, 2, size=(2, 2, 6, 5, 5))
  mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
  total, count = 0.0, 0
  for n in range(2):
    for t in range(6):
      if mask[n, t]:
        for i in range(5):
          for j in range(5):
            total += abs(pred[n, t, i, j] - target[n, t, i, j])
            count += 1
  assert metrics.distance_prediction_error(pred, target, mask) == pytest.approx(total / count)
  pred[~mask] = np.nan
  assert metrics.distance_prediction_error(pred, target, mask) == pytest.approx(total / count)


def _point_segment(p, a, b):
  ab = b - a
  length2 = ab @ ab
  if length2 == 0:
    return np.linalg.norm(p - a)
  t = np.clip((p - a) @ ab / length2, 0, 1)
  return np.linalg.norm(p - (a + t * ab))


def _reference_segment_distance(p1, q1, p2, q2):
  """Min of the four endpoint-to-segment distances and the interior critical point."""
  candidates = [_point_segment(p1, p2, q2), _point_segment(q1, p2, q2),
                _point_segment(p2, p1, q1), _point_segment(q2, p1, q1)]
  d1, d2 = q1 - p1, q2 - p2
  if np.linalg.norm(np.cross(d1, d2)) > 1e-9:
    lhs = np.array([[d1 @ d1, -(d1 @ d2)], [d1 @ d2, -(d2 @ d2)]])
    s, t = np.linalg.solve(lhs, [(p2 - p1) @ d1, (p2 - p1) @ d2])
    if 0 <= s <= 1 and 0 <= t <= 1:
      candidates.append(np.linalg.norm(p1 + s * d1 - p2 - t * d2))
  return min(candidates)


def test_segment_distance_matches_reference():
  rng = np.random.default_rng(18)
  p1, q1, p2, q2 = rng.normal(size=(4, 300, 3))
  # Parallel, collinear-overlapping, crossing and degenerate segments.
  p1[0], q1[0], p2[0], q2[0] = [0, 0, 0], [1, 0, 0], [0.5, 1, 0], [2, 1, 0]
  p1[1], q1[1], p2[1], q2[1] = [0, 0, 0], [1, 0, 0], [0.5, 0, 0], [3, 0, 0]
  p1[2], q1[2], p2[2], q2[2] = [-1, 0, 0], [1, 0, 0], [0, -1, 0.2], [0, 1, 0.2]
  q1[3] = p1[3]
  q2[4] = p2[4]
  q1[5], q2[5] = p1[5], p2[5]
  got = metrics.segment_distance(p1, q1, p2, q2)
  want = [_reference_segment_distance(*seg) for seg in zip(p1, q1, p2, q2)]
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(got[:3], [1.0, 0.0, 0.2], atol=1e-12)


def _pair(person1, person2, n=1, t=1):
  """[22, 3] x 2 -> [n, t, 2, 22, 3]."""
  return np.broadcast_to(np.stack([person1, person2]), (n, t, 2, 22, 3)).copy()


def _vertical_line_skeleton(x):
  """All joints on the vertical line at (x, ., 0), heights spread over [0.1, 1.7]."""
  joints = np.zeros((22, 3))
  joints[:, 0] = x
  joints[:, 1] = np.linspace(0.1, 1.7, 22)
  return joints


def test_bodies_far_apart_do_not_penetrate():
  rest = skeleton.REST_JOINTS
  positions = _pair(rest, rest + [3.0, 0, 0], t=4)
  got = metrics.interpenetration(positions, np.ones((1, 4), bool))
  assert got == {'penetration_rate': 0.0, 'penetration_depth': 0.0}


def test_overlapping_bodies_penetrate_by_the_right_depth():
  mask = np.ones((1, 1), bool)
  radii = np.full(21, 0.05)
  # Vertical lines 0.3 m apart: every overlapping bone pair is 0.3 m apart; no overlap at r=0.05.
  apart = _pair(_vertical_line_skeleton(0.0), _vertical_line_skeleton(0.3))
  assert metrics.interpenetration(apart, mask, bone_radii=radii)['penetration_rate'] == 0.0
  # A 0.2 m head capsule on both: depth 0.2 + 0.2 - 0.3.
  radii[14] = 0.2  # bone to joint 15 (head)
  got = metrics.interpenetration(apart, mask, bone_radii=radii)
  assert got['penetration_rate'] == 1.0
  assert got['penetration_depth'] == pytest.approx(0.1)
  # Coincident bodies: depth = the two largest radii of the same bone.
  same = _pair(skeleton.REST_JOINTS, skeleton.REST_JOINTS)
  got = metrics.interpenetration(same, mask)
  assert got['penetration_depth'] == pytest.approx(2 * max(metrics.DEFAULT_BONE_RADII))


def _random_pair_positions(n, t, offset, seed):
  rng = np.random.default_rng(seed)
  rest = skeleton.REST_JOINTS
  positions = np.empty((n, t, 2, 22, 3))
  positions[:, :, 0] = rest + 0.05 * rng.normal(size=(n, t, 22, 3))
  positions[:, :, 1] = rest + [offset, 0, 0] + 0.05 * rng.normal(size=(n, t, 22, 3))
  return positions


def test_penetration_depths_match_reference_and_ignore_padding():
  positions = _random_pair_positions(2, 3, 0.45, 19)
  mask = np.array([[1, 1, 0], [1, 0, 1]], bool)
  radii = np.asarray(metrics.DEFAULT_BONE_RADII)
  want = []
  for n, t in zip(*np.nonzero(mask)):
    best = 0.0
    for i in range(1, 22):
      for j in range(1, 22):
        a, b = positions[n, t, 0], positions[n, t, 1]
        dist = _reference_segment_distance(a[skeleton.PARENTS[i]], a[i], b[skeleton.PARENTS[j]],
                                           b[j])
        best = max(best, radii[i - 1] + radii[j - 1] - dist)
    want.append(best)
  got = metrics.penetration_depths(positions, mask)
  np.testing.assert_allclose(got, want, atol=1e-12)
  assert np.any(got > 0)
  positions[~mask] = np.nan
  np.testing.assert_allclose(metrics.penetration_depths(positions, mask), want, atol=1e-12)
  swapped = positions[:, :, ::-1]
  np.testing.assert_allclose(metrics.penetration_depths(swapped, mask), want, atol=1e-12)


def _standing_pair(t):
  """Two persons with every joint at 1 m height (no contact), [1, t, 2, 22, 3]."""
  positions = np.zeros((1, t, 2, 22, 3))
  positions[..., 1] = 1.0
  positions[:, :, 1, :, 0] = 2.0
  return positions


def test_planted_sliding_foot_is_skating():
  t = 10
  positions = _standing_pair(t)
  toe = 10  # left toe, contact height 0.05
  positions[0, :, 0, toe, 1] = 0.01
  positions[0, :, 0, toe, 0] = np.arange(t) / 30.0 * 1.0  # 1 m/s along x
  mask = np.ones((1, t), bool)
  assert metrics.foot_skating(positions, mask) == pytest.approx(0.5)  # 1 of 2 persons
  # The same foot moving slowly, or lifted, does not skate.
  slow = positions.copy()
  slow[0, :, 0, toe, 0] = np.arange(t) / 30.0 * 0.2
  assert metrics.foot_skating(slow, mask) == 0.0
  lifted = positions.copy()
  lifted[0, :, 0, toe, 1] = 0.2
  assert metrics.foot_skating(lifted, mask) == 0.0
  # Vertical motion does not count as sliding.
  bobbing = positions.copy()
  bobbing[0, :, 0, toe, 0] = 0.0
  bobbing[0, :, 0, toe, 1] = 0.01 + 0.03 * (np.arange(t) % 2)
  assert metrics.foot_skating(bobbing, mask) == 0.0
  # Only the first 4 frames valid: 3 valid steps, all skating, for 1 of 2 persons.
  half = np.zeros((1, t), bool)
  half[0, :4] = True
  assert metrics.foot_skating(positions, half) == pytest.approx(0.5)


def test_foot_skating_matches_loop():
  rng = np.random.default_rng(20)
  positions = np.empty((3, 12, 2, 22, 3))
  positions[..., [0, 2]] = np.cumsum(rng.normal(0, 0.02, size=(3, 12, 2, 22, 2)), axis=1)
  positions[..., 1] = rng.uniform(0.0, 0.15, size=(3, 12, 2, 22))
  mask = np.ones((3, 12), bool)
  mask[1, 8:] = False
  mask[2, 5] = False
  heights = dict(zip(skeleton.FOOT_JOINTS, metrics.FOOT_CONTACT_HEIGHTS))
  skating, total = 0, 0
  for n in range(3):
    for t in range(11):
      if not (mask[n, t] and mask[n, t + 1]):
        continue
      for p in range(2):
        total += 1
        for j in skeleton.FOOT_JOINTS:
          a, b = positions[n, t, p, j], positions[n, t + 1, p, j]
          speed = math.hypot(b[0] - a[0], b[2] - a[2]) * 30
          if a[1] < heights[j] and b[1] < heights[j] and speed > 0.5:
            skating += 1
            break
  assert 0 < skating < total
  assert metrics.foot_skating(positions, mask) == pytest.approx(skating / total)


def test_contact_precision_recall_matches_loop():
  generated = _random_pair_positions(2, 5, 0.35, 21)
  truth = _random_pair_positions(2, 5, 0.35, 22)
  mask = np.ones((2, 5), bool)
  mask[1, 3:] = False
  tp = fp = fn = 0
  for n in range(2):
    for t in range(5):
      if mask[n, t]:
        g = sp_distance.cdist(generated[n, t, 0], generated[n, t, 1]) < 0.1
        r = sp_distance.cdist(truth[n, t, 0], truth[n, t, 1]) < 0.1
        tp += np.sum(g & r)
        fp += np.sum(g & ~r)
        fn += np.sum(~g & r)
  assert tp > 0 and fp > 0 and fn > 0
  got = metrics.contact_precision_recall(generated, truth, mask)
  precision, recall = tp / (tp + fp), tp / (tp + fn)
  assert got['contact_precision'] == pytest.approx(precision)
  assert got['contact_recall'] == pytest.approx(recall)
  assert got['contact_f1'] == pytest.approx(2 * precision * recall / (precision + recall))


def test_contact_of_a_motion_with_itself_and_with_no_contact():
  truth = _random_pair_positions(1, 4, 0.35, 23)
  mask = np.ones((1, 4), bool)
  same = metrics.contact_precision_recall(truth, truth, mask)
  assert same == {'contact_precision': 1.0, 'contact_recall': 1.0, 'contact_f1': 1.0}
  apart = truth.copy()
  apart[:, :, 1, :, 0] += 5.0
  got = metrics.contact_precision_recall(apart, truth, mask)
  assert math.isnan(got['contact_precision']) and got['contact_recall'] == 0.0


# ----------------------------------------------------------------------------- bad inputs


_E = _embeddings(120, 8)
_POS = _random_pair_positions(1, 3, 0.5, 0)
_MASK = np.ones((1, 3), bool)


def _with_nan(x):
  x = np.array(x, dtype=np.float64)
  x.flat[0] = np.nan
  return x


@pytest.mark.parametrize('call, match', [
    (lambda: metrics.euclidean_distance_matrix(_E, _E[:, :4]), 'same embedding size'),
    (lambda: metrics.euclidean_distance_matrix(_E[0], _E), r'a must have shape \[N, D\]'),
    (lambda: metrics.r_precision(_E[:95], _E[:95]), 'fewer than one batch'),
    (lambda: metrics.r_precision(_E, _E[:110]), 'matched pairs'),
    (lambda: metrics.r_precision(_with_nan(_E), _E), 'text_embeddings contains'),
    (lambda: metrics.r_precision(_E, _E, top_k=0), 'top_k'),
    (lambda: metrics.mm_dist(_E, _with_nan(_E)), 'motion_embeddings contains'),
    (lambda: metrics.fid(_E, _E[:, :4]), 'same embedding size'),
    (lambda: metrics.fid(_E[:1], _E), 'embeddings_a has 1 rows'),
    (lambda: metrics.fid(_E, _with_nan(_E)), 'embeddings_b contains'),
    (lambda: metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3)), 'mu2'),
    (lambda: metrics.diversity(_E, 0), 'needs more than 300'),
    (lambda: metrics.diversity(_with_nan(np.ones((400, 8))), 0), 'embeddings contains'),
    (lambda: metrics.multimodality(np.ones((5, 10, 4)), 0), 'needs more than 10'),
    (lambda: metrics.multimodality(np.ones((5, 4)), 0), 'num_texts, num_samples, D'),
    (lambda: metrics.confidence_interval([]), 'R >= 1'),
    (lambda: metrics.replicate(lambda rng: 0.0, replications=0), 'replications'),
    (lambda: metrics.distance_prediction_error(np.ones((1, 3, 5, 5)), np.ones((1, 3, 4, 4)),
                                               _MASK), 'same shape'),
    (lambda: metrics.distance_prediction_error(np.ones((1, 3, 5, 5)), np.ones((1, 3, 5, 5)),
                                               np.zeros((1, 3))), 'no valid frame'),
    (lambda: metrics.interpenetration(_POS[..., :2], _MASK), 'positions must have shape'),
    (lambda: metrics.interpenetration(_POS, _MASK[:, :2]), r'mask must have shape'),
    (lambda: metrics.interpenetration(_with_nan(_POS), _MASK), 'positions \\(valid frames\\)'),
    (lambda: metrics.interpenetration(_POS, _MASK, bone_radii=np.ones(22)), 'bone_radii'),
    (lambda: metrics.foot_skating(_POS, np.array([[1, 0, 1]])), 'consecutive'),
    (lambda: metrics.foot_skating(_POS, _MASK, fps=0), 'fps'),
    (lambda: metrics.foot_skating(_POS, _MASK, contact_heights=(0.1,)), 'contact_heights'),
    (lambda: metrics.contact_precision_recall(_POS, _POS[:, :2], _MASK), 'mask must have shape'),
    (lambda: metrics.contact_precision_recall(_POS, _POS, _MASK, threshold=-1), 'threshold'),
    (lambda: metrics.contact_precision_recall(_POS, _with_nan(_POS), _MASK), 'ground_truth'),
])
def test_bad_inputs_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()
