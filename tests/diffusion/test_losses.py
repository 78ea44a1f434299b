"""Loss terms against independent NumPy float64 references, hand-made cases and invariances."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from finedual_jax.diffusion import losses
from finedual_jax.motion import body_parts
from finedual_jax.motion import skeleton

GEOMETRIC = losses.GEOMETRIC_TERMS
ALL_WEIGHTS = dict(losses.INTERGEN_WEIGHTS)
MAX_T = 700


# ----------------------------------------------------------------------------- data


def _random_batch(seed: int = 0, batch: int = 6, frames: int = 5):
  """Normalised (pred, x0) [B, T, 2, 262] float32 with close and far joint pairs, plus mask, t."""
  rng = np.random.default_rng(seed)
  mean = rng.normal(0.0, 0.1, 262)
  std = rng.uniform(0.5, 1.5, 262)
  world = rng.normal(0.0, 1.0, (batch, frames, 2, 262))
  pos_a = rng.uniform(-0.5, 0.5, (batch, frames, 22, 3))
  # Person b near person a: many joint pairs within 1 m and a few within 0.1 m.
  pos_b = pos_a + rng.normal(0.0, 0.4, pos_a.shape)
  world[:, :, 0, :66] = pos_a.reshape(batch, frames, 66)
  world[:, :, 1, :66] = pos_b.reshape(batch, frames, 66)
  world[..., 258:262] = rng.integers(0, 2, (batch, frames, 2, 4))
  x0 = ((world - mean) / std).astype(np.float32)
  pred = (x0 + rng.normal(0.0, 0.3, x0.shape)).astype(np.float32)
  lengths = np.array([frames, 3, frames, 1, 4, 2])[:batch]
  mask = (np.arange(frames)[None] < lengths[:, None]).astype(np.float32)
  t = np.array([0, 900, 700, 701, 100, 350])[:batch]
  return pred, x0, mask, t, mean.astype(np.float32), std.astype(np.float32)


def _features_from_positions(positions: np.ndarray, contacts: float = 1.0) -> np.ndarray:
  """[B, T, 2, 22, 3] world positions -> [B, T, 2, 262] de-normalised features."""
  out = np.zeros(positions.shape[:3] + (262,), np.float32)
  out[..., :66] = positions.reshape(*positions.shape[:3], 66)
  out[..., 258:262] = contacts
  return out


@functools.partial(jax.jit, static_argnames=('weights',))
def _jit_losses(pred, x0, mask, t, mean, std, extra, weights):
  return losses.training_losses(pred, x0, mask, t, mean, std, dict(weights), MAX_T, extra)


def _losses(pred, x0, mask, t, mean=None, std=None, weights=None, extra=None):
  """training_losses, compiled once per shape and weight set (eager dispatch is slower here)."""
  mean = np.zeros(262, np.float32) if mean is None else mean
  std = np.ones(262, np.float32) if std is None else std
  weights = tuple(sorted((ALL_WEIGHTS if weights is None else weights).items()))
  return _jit_losses(jnp.asarray(pred), jnp.asarray(x0), jnp.asarray(mask), jnp.asarray(t),
                     jnp.asarray(mean), jnp.asarray(std), extra, weights)


_info_nce = jax.jit(losses.info_nce)


# ----------------------------------------------------------------------------- reference


def _ref_facing_angle(pos: np.ndarray) -> float:
  forward = np.cross([0.0, 1.0, 0.0], pos[skeleton.RIGHT_HIP] - pos[skeleton.LEFT_HIP])
  return np.arctan2(forward[0], forward[2])


def _ref_losses(pred, x0, mask, t, mean, std, max_t=MAX_T) -> dict[str, float]:
  """Per-example loops in float64, written from the term definitions, not from the code."""
  mean, std = mean.astype(np.float64), std.astype(np.float64)
  pw = pred.astype(np.float64) * std + mean
  xw = x0.astype(np.float64) * std + mean
  ppos = pw[..., :66].reshape(*pw.shape[:3], 22, 3)
  xpos = xw[..., :66].reshape(*xw.shape[:3], 22, 3)
  batch, frames = mask.shape
  sums = {name: 0.0 for name in losses.MOTION_TERMS}
  for b in range(batch):
    valid = [i for i in range(frames) if mask[b, i]]
    pairs = [i for i in range(frames - 1) if mask[b, i] and mask[b, i + 1]]
    mean_of = lambda values: float(np.mean(values)) if values else 0.0
    sums['simple'] += mean_of([np.mean((pred[b, i] - x0[b, i]) ** 2) for i in valid])
    if t[b] > max_t:
      continue
    sums['velocity'] += mean_of([
        np.mean(((ppos[b, i + 1] - ppos[b, i]) - (xpos[b, i + 1] - xpos[b, i])) ** 2)
        for i in pairs])

    def bone_error(i):
      errors = []
      for person in range(2):
        for j in range(1, 22):
          k = skeleton.PARENTS[j]
          lp = np.linalg.norm(ppos[b, i, person, j] - ppos[b, i, person, k])
          lx = np.linalg.norm(xpos[b, i, person, j] - xpos[b, i, person, k])
          errors.append((lp - lx) ** 2)
      return np.mean(errors)
    sums['bone_length'] += mean_of([bone_error(i) for i in valid])

    def skate(i):
      per_person = []
      for person in range(2):
        values = [np.mean((ppos[b, i + 1, person, joint] - ppos[b, i, person, joint]) ** 2)
                  for k, joint in enumerate(skeleton.FOOT_JOINTS)
                  if xw[b, i, person, 258 + k] > 0.5]
        per_person.append(np.mean(values) if values else 0.0)
      return np.mean(per_person)
    sums['foot_contact'] += mean_of([skate(i) for i in pairs])

    def distance_error(i, threshold):
      dp = np.linalg.norm(ppos[b, i, 0][:, None] - ppos[b, i, 1][None], axis=-1)
      dx = np.linalg.norm(xpos[b, i, 0][:, None] - xpos[b, i, 1][None], axis=-1)
      near = dx < threshold
      return np.mean((dp - dx)[near] ** 2) if near.any() else 0.0
    sums['distance_map'] += mean_of([distance_error(i, 1.0) for i in valid])
    sums['joint_affinity'] += mean_of([distance_error(i, 0.1) for i in valid])

    def orientation_error(i):
      rel = lambda pos: _ref_facing_angle(pos[1]) - _ref_facing_angle(pos[0])
      ap, ax = rel(ppos[b, i]), rel(xpos[b, i])
      return np.mean([(np.cos(ap) - np.cos(ax)) ** 2, (np.sin(ap) - np.sin(ax)) ** 2])
    sums['relative_orientation'] += mean_of([orientation_error(i) for i in valid])
  return {name: value / batch for name, value in sums.items()}


def _ref_info_nce(m, txt, temperature, valid=None):
  m, txt = np.asarray(m, np.float64), np.asarray(txt, np.float64)
  if valid is not None:
    m, txt = m[np.asarray(valid, bool)], txt[np.asarray(valid, bool)]
  if len(m) < 2:
    return 0.0
  m = m / np.linalg.norm(m, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  logits = m @ txt.T / temperature

  def ce(lg):
    lg = lg - lg.max(axis=1, keepdims=True)
    return np.mean(np.log(np.exp(lg).sum(axis=1)) - np.diag(lg))
  return 0.5 * (ce(logits) + ce(logits.T))


# ----------------------------------------------------------------------------- motion terms


def test_terms_match_numpy_reference():
  pred, x0, mask, t, mean, std = _random_batch()
  got = _losses(pred, x0, mask, t, mean, std)
  want = _ref_losses(pred, x0, mask, t, mean, std)
  # The random data must exercise the thresholds for the comparison to mean anything.
  assert want['joint_affinity'] > 0 and want['distance_map'] > 0 and want['foot_contact'] > 0
  for name in losses.MOTION_TERMS:
    np.testing.assert_allclose(float(got[name]), want[name], rtol=2e-4, atol=1e-7, err_msg=name)
  total = sum(ALL_WEIGHTS[name] * want[name] for name in losses.MOTION_TERMS)
  np.testing.assert_allclose(float(got['total']), total, rtol=2e-4)


def test_identical_prediction_gives_zero():
  _, x0, mask, t, mean, std = _random_batch(2)
  got = _losses(x0, x0, mask, t, mean, std)
  for name in losses.MOTION_TERMS:
    if name != 'foot_contact':
      assert float(got[name]) == 0.0, name
  # foot_contact penalises the prediction's own foot motion at true contacts; on random data
  # the target itself skates, so the term equals the target's skating, not 0 (see next test).
  want = _ref_losses(x0, x0, mask, t, mean, std)['foot_contact']
  np.testing.assert_allclose(float(got['foot_contact']), want, rtol=2e-4)


def test_static_pose_has_zero_velocity_and_foot_contact():
  rest = np.broadcast_to(skeleton.REST_JOINTS, (2, 4, 2, 22, 3)).copy()
  rest[:, :, 1, :, 0] += 1.0  # person b stands 1 m to the side
  mask = np.ones((2, 4), np.float32)
  t = np.array([0, 0])
  pred = _features_from_positions(rest)
  # A different but also static target; contacts all on.
  target = _features_from_positions(rest + np.array([0.2, 0.0, 0.1]))
  got = _losses(pred, target, mask, t)
  assert float(got['velocity']) == 0.0 and float(got['foot_contact']) == 0.0
  # A prediction sliding 3 cm per frame skates: mean over xyz of 0.03^2 per foot.
  sliding = rest + np.arange(4)[None, :, None, None, None] * np.array([0.03, 0.0, 0.0])
  got = _losses(_features_from_positions(sliding), target, mask, t)
  np.testing.assert_allclose(float(got['foot_contact']), 0.03 ** 2 / 3, rtol=1e-4)
  no_contact = _features_from_positions(rest, contacts=0.0)
  assert float(_losses(_features_from_positions(sliding), no_contact, mask, t)
               ['foot_contact']) == 0.0


def test_rest_pose_bone_lengths_are_rest_offsets():
  got = np.asarray(jax.jit(losses.bone_lengths)(jnp.asarray(skeleton.REST_JOINTS, jnp.float32)))
  np.testing.assert_allclose(got, np.linalg.norm(skeleton.REST_OFFSETS[1:], axis=-1), rtol=1e-5)


def test_far_apart_pair_has_zero_distance_terms_whatever_the_prediction():
  rng = np.random.default_rng(3)
  target = np.broadcast_to(skeleton.REST_JOINTS, (2, 3, 2, 22, 3)).copy()
  target[:, :, 1, :, 0] += 5.0
  pred = rng.normal(0.0, 0.5, target.shape)  # the persons overlap in the prediction
  got = _losses(_features_from_positions(pred), _features_from_positions(target),
                np.ones((2, 3), np.float32), np.array([0, 0]))
  assert float(got['distance_map']) == 0.0 and float(got['joint_affinity']) == 0.0
  assert float(got['bone_length']) > 0  # the prediction is not ignored altogether


def _rotate_y(positions: np.ndarray, angle: float) -> np.ndarray:
  c, s = np.cos(angle), np.sin(angle)
  return positions @ np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]).T


def test_relative_orientation_sees_a_turned_person_only():
  pair = np.broadcast_to(skeleton.REST_JOINTS, (1, 2, 2, 22, 3)).copy()
  pair[:, :, 1] = _rotate_y(pair[:, :, 1], np.pi) + np.array([0.0, 0.0, 1.2])  # face to face
  target = _features_from_positions(pair)
  mask, t = np.ones((1, 2), np.float32), np.array([0])
  # Turning the whole scene keeps the relative facing.
  turned_scene = _features_from_positions(_rotate_y(pair, 0.7))
  np.testing.assert_allclose(float(_losses(turned_scene, target, mask, t)
                                   ['relative_orientation']), 0.0, atol=1e-10)
  # Turning person b by alpha: ((cos a - 1)^2 + sin^2 a) / 2 = 1 - cos a.
  alpha = 0.5
  turned_b = pair.copy()
  turned_b[:, :, 1] = _rotate_y(pair[:, :, 1], alpha)
  got = _losses(_features_from_positions(turned_b), target, mask, t)['relative_orientation']
  np.testing.assert_allclose(float(got), 1 - np.cos(alpha), rtol=1e-4)


def test_padding_and_late_timesteps_never_change_the_losses():
  pred, x0, mask, t, mean, std = _random_batch(4)
  base = _losses(pred, x0, mask, t, mean, std)
  rng = np.random.default_rng(5)
  padded = (mask == 0)[:, :, None, None]
  pred2 = np.where(padded, rng.normal(0, 10, pred.shape), pred).astype(np.float32)
  x02 = np.where(padded, rng.normal(0, 10, x0.shape), x0).astype(np.float32)
  changed = _losses(pred2, x02, mask, t, mean, std)
  for name in base:
    np.testing.assert_allclose(float(changed[name]), float(base[name]), rtol=1e-6, err_msg=name)
  # The geometric terms ignore examples at t > 700 entirely.
  late = (t > MAX_T)[:, None, None, None]
  pred3 = np.where(late, rng.normal(0, 10, pred.shape), pred).astype(np.float32)
  changed = _losses(pred3, x0, mask, t, mean, std)
  for name in GEOMETRIC:
    np.testing.assert_allclose(float(changed[name]), float(base[name]), rtol=1e-6, err_msg=name)


def test_halves_average_to_the_whole_batch():
  """The per-example normalisation: a pmean over equal device shards gives the global value."""
  pred, x0, mask, t, mean, std = _random_batch(6)
  whole = _losses(pred, x0, mask, t, mean, std)
  first = _losses(pred[:3], x0[:3], mask[:3], t[:3], mean, std)
  second = _losses(pred[3:], x0[3:], mask[3:], t[3:], mean, std)
  for name in whole:
    np.testing.assert_allclose(float(whole[name]), float(first[name] + second[name]) / 2,
                               rtol=1e-5, err_msg=name)


def test_gradients_are_finite_for_a_zero_prediction():
  """A zero-initialised head predicts the mean for both persons: coinciding joints."""
  _, x0, mask, t, mean, std = _random_batch(7)
  loss = lambda p: _losses(p, x0, mask, t, mean, std)['total']
  grad = jax.grad(loss)(jnp.zeros_like(jnp.asarray(x0)))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_weights_select_terms_and_extra_terms_are_weighted():
  pred, x0, mask, t, mean, std = _random_batch(8)
  got = _losses(pred, x0, mask, t, mean, std,
                weights={'simple': 1.0, 'bone_length': 0.0, 'distance_regression': 2.0},
                extra={'distance_regression': jnp.asarray(0.25)})
  assert set(got) == {'simple', 'distance_regression', 'total'}
  np.testing.assert_allclose(float(got['total']), float(got['simple']) + 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match='no .individual_nce. value'):
    _losses(pred, x0, mask, t, mean, std, weights={'individual_nce': 1.0})
  with pytest.raises(ValueError, match='Unknown loss term'):
    _losses(pred, x0, mask, t, mean, std, weights={'velocty': 30.0})


def test_distance_regression_is_a_masked_mse():
  rng = np.random.default_rng(9)
  pred, true = rng.normal(size=(2, 2, 3, 5, 5)).astype(np.float32)
  mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  got = losses.distance_regression(jnp.asarray(pred), jnp.asarray(true), jnp.asarray(mask))
  want = (np.mean((pred[0, :2] - true[0, :2]) ** 2) + np.mean((pred[1, :1] - true[1, :1]) ** 2)) / 2
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


# ----------------------------------------------------------------------------- body parts


def test_parts_partition_the_skeleton():
  joints = sorted(j for part in body_parts.PARTS for j in part)
  assert joints == list(range(skeleton.NUM_JOINTS))
  assert len(body_parts.PART_NAMES) == len(body_parts.PARTS) == body_parts.NUM_PARTS == 5
  for j, k in enumerate(body_parts.JOINT_TO_PART):
    assert j in body_parts.PARTS[k]
  for i, j in body_parts.KINEMATIC_EDGES:
    assert 0 <= i < 5 and 0 <= j < 5 and i != j


def test_part_distances_match_a_brute_force_loop():
  rng = np.random.default_rng(10)
  a, b = rng.normal(size=(2, 3, 22, 3))
  want = np.zeros((3, 5, 5))
  for n in range(3):
    for i, part_i in enumerate(body_parts.PARTS):
      for j, part_j in enumerate(body_parts.PARTS):
        want[n, i, j] = min(np.linalg.norm(a[n, p] - b[n, q]) for p in part_i for q in part_j)
  got_np = body_parts.part_distances(a, b)
  assert isinstance(got_np, np.ndarray) and got_np.dtype == np.float64
  np.testing.assert_allclose(got_np, want, rtol=1e-12)
  got_jnp = jax.jit(body_parts.part_distances)(jnp.asarray(a, jnp.float32),
                                               jnp.asarray(b, jnp.float32))
  assert isinstance(got_jnp, jax.Array)
  np.testing.assert_allclose(np.asarray(got_jnp), want, rtol=1e-5)


# ----------------------------------------------------------------------------- InfoNCE


def test_info_nce_aligned_and_shuffled():
  rng = np.random.default_rng(11)
  emb = rng.normal(size=(8, 64)).astype(np.float32)
  aligned = _info_nce(jnp.asarray(emb), jnp.asarray(emb), 0.01)
  assert float(aligned) < 1e-4
  shuffled = _info_nce(jnp.asarray(np.roll(emb, 1, axis=0)), jnp.asarray(emb), 0.01)
  assert float(shuffled) > np.log(8) / 2


def test_info_nce_matches_reference_and_valid_excludes_rows():
  rng = np.random.default_rng(12)
  m, txt = rng.normal(size=(2, 10, 16)).astype(np.float32)
  valid = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], np.float32)
  np.testing.assert_allclose(float(_info_nce(jnp.asarray(m), jnp.asarray(txt), 0.1)),
                             _ref_info_nce(m, txt, 0.1), rtol=1e-5)
  got = _info_nce(jnp.asarray(m), jnp.asarray(txt), 0.1, valid=jnp.asarray(valid))
  np.testing.assert_allclose(float(got), _ref_info_nce(m, txt, 0.1, valid), rtol=1e-5)
  # Invalid rows are neither positives nor negatives: their embeddings do not matter.
  m2 = np.where(valid[:, None] > 0, m, rng.normal(size=m.shape)).astype(np.float32)
  txt2 = np.where(valid[:, None] > 0, txt, rng.normal(size=m.shape)).astype(np.float32)
  np.testing.assert_allclose(
      float(_info_nce(jnp.asarray(m2), jnp.asarray(txt2), 0.1, valid=jnp.asarray(valid))),
      float(got), rtol=1e-6)
  one = np.zeros(10, np.float32)
  one[3] = 1
  assert float(_info_nce(jnp.asarray(m), jnp.asarray(txt), 0.1,
                               valid=jnp.asarray(one))) == 0.0
  grad = jax.grad(lambda x: _info_nce(x, jnp.asarray(txt), 0.1,
                                            valid=jnp.zeros(10)))(jnp.asarray(m))
  assert np.all(np.asarray(grad) == 0.0)


def test_info_nce_over_devices_equals_the_global_batch():
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(13)
  m, txt = rng.normal(size=(2, 16, 8)).astype(np.float32)
  # Unequal valid counts per device (device 1 has none), so a plain local mean would be wrong.
  valid = np.ones(16, np.float32)
  valid[[2, 3, 5, 9]] = 0.0
  m, txt, valid = jnp.asarray(m), jnp.asarray(txt), jnp.asarray(valid)

  def per_device(m_local, txt_local, valid_local):
    loss_fn = functools.partial(losses.info_nce, temperature=0.2, valid=valid_local,
                                axis_name='data')
    loss, grad = jax.value_and_grad(lambda x: loss_fn(x, txt_local))(m_local)
    return jax.lax.pmean(loss, 'data'), grad

  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P('data'),) * 3,
                                  out_specs=(P(), P('data'))))
  loss, grad = sharded(m, txt, valid)
  full_loss, full_grad = jax.jit(jax.value_and_grad(
      lambda x: losses.info_nce(x, txt, 0.2, valid=valid)))(m)
  np.testing.assert_allclose(float(loss), float(full_loss), rtol=1e-5)
  # Each device's gradient sums every device's loss terms (all_gather's transpose), so the
  # average over devices of the per-device losses has the gradient grad / 8.
  np.testing.assert_allclose(np.asarray(grad) / 8, np.asarray(full_grad), rtol=1e-4, atol=1e-7)
