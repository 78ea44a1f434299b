"""Training losses, masked to valid frames and normalised per example.

Every term is a mean over examples of a per-example mean over that example's valid frames, so a
batch split across devices and averaged with ``lax.pmean`` gives exactly the global value.
Examples that a term does not apply to (the geometric terms at t > ``geometric_max_t``) count
as zeros in that mean rather than being dropped from it, for the same reason.

InterGen's terms (Liang et al. 2024, §3.3 and its reference code) on de-normalised motion:
``simple`` x0 MSE; per person ``velocity``, ``bone_length``, ``foot_contact``; between persons
``distance_map`` (1 m mask), ``joint_affinity`` (0.1 m mask) and ``relative_orientation``.
FineDual's terms: ``distance_regression`` and the symmetric InfoNCE ``info_nce``.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from finedual_jax.motion import features as features_lib
from finedual_jax.motion import skeleton

INTERGEN_WEIGHTS = {
    'simple': 1.0, 'velocity': 30.0, 'bone_length': 10.0, 'foot_contact': 30.0,
    'distance_map': 3.0, 'joint_affinity': 3.0, 'relative_orientation': 0.01,
}
"""InterGen's loss weights (DESIGN §3)."""

GEOMETRIC_TERMS = ('velocity', 'bone_length', 'foot_contact', 'distance_map', 'joint_affinity',
                   'relative_orientation')
MOTION_TERMS = ('simple',) + GEOMETRIC_TERMS
EXTRA_TERMS = ('distance_regression', 'individual_nce', 'overall_nce')
"""FineDual's terms, computed by the caller from model outputs and passed to ``training_losses``."""

DISTANCE_MAP_THRESHOLD = 1.0    # metres
JOINT_AFFINITY_THRESHOLD = 0.1  # metres

# Stands for -inf in masked logits: finite, so rows or columns that are all masked give
# finite values (and zero, not NaN, gradients once multiplied by their zero mask).
_MASKED_LOGIT = -1e9


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """values [B, T, ...], mask [B, T] -> scalar: mean over examples of per-example masked means."""
  per_frame = values.reshape(*values.shape[:2], -1).mean(axis=-1)
  per_example = jnp.sum(per_frame * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  return jnp.mean(per_example)


def _safe_norm(v: jax.Array, axis: int = -1) -> jax.Array:
  """Euclidean norm whose gradient is 0, not NaN, at v = 0 (coinciding joints, zero-init heads)."""
  squared = jnp.sum(v * v, axis=axis)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def joint_positions(motion: jax.Array) -> jax.Array:
  """[..., 262] de-normalised features -> [..., 22, 3] joint positions (metres)."""
  return motion[..., features_lib.POSITIONS].reshape(*motion.shape[:-1], skeleton.NUM_JOINTS, 3)


def frame_pair_mask(mask: jax.Array) -> jax.Array:
  """[B, T] frame mask -> [B, T-1] mask of frame pairs (t, t+1) with both frames valid."""
  return mask[:, 1:] * mask[:, :-1]


def velocity_loss(pred: jax.Array, true: jax.Array, mask: jax.Array) -> jax.Array:
  """InterGen's velocity term: MSE of frame-to-frame joint displacements, both persons.

  pred, true: [B, T, 2, 262] de-normalised; mask: [B, T]. Uses positions, not the velocity
  channels, so it constrains the trajectory the positions actually trace.
  """
  pred_vel = jnp.diff(joint_positions(pred), axis=1)
  true_vel = jnp.diff(joint_positions(true), axis=1)
  return masked_mean((pred_vel - true_vel) ** 2, frame_pair_mask(mask))


def bone_lengths(positions: jax.Array) -> jax.Array:
  """[..., 22, 3] -> [..., 21] length of the bone from each non-root joint to its parent."""
  parents = jnp.asarray(skeleton.PARENTS[1:])
  return _safe_norm(positions[..., 1:, :] - positions[..., parents, :])


def bone_length_loss(pred: jax.Array, true: jax.Array, mask: jax.Array) -> jax.Array:
  """InterGen's bone-length term: MSE of the 21 bone lengths, both persons.

  pred, true: [B, T, 2, 262] de-normalised; mask: [B, T].
  """
  error = bone_lengths(joint_positions(pred)) - bone_lengths(joint_positions(true))
  return masked_mean(error ** 2, mask)


def foot_contact_loss(pred: jax.Array, true: jax.Array, mask: jax.Array) -> jax.Array:
  """Foot-skating penalty: predicted foot velocity where the ground truth says "in contact".

  pred, true: [B, T, 2, 262] de-normalised; mask: [B, T]. Frame t's contact flags describe the
  pair (t, t+1) (DESIGN §1.1), so they mask the displacement pos[t+1] - pos[t]. Per person and
  frame pair: mean over the contacting feet of the xyz-mean squared displacement (0 when no
  foot is in contact); then the mean over the two persons.
  """
  feet = list(skeleton.FOOT_JOINTS)
  feet_vel = jnp.diff(joint_positions(pred)[..., feet, :], axis=1)   # [B, T-1, 2, 4, 3]
  speed_sq = jnp.mean(feet_vel ** 2, axis=-1)                         # [B, T-1, 2, 4]
  # De-normalised flags are 0/1 up to rounding; the threshold makes them exact.
  contact = (true[:, :-1, :, features_lib.CONTACTS] > 0.5).astype(speed_sq.dtype)
  per_person = (jnp.sum(speed_sq * contact, axis=-1)
                / jnp.maximum(jnp.sum(contact, axis=-1), 1.0))       # [B, T-1, 2]
  return masked_mean(per_person, frame_pair_mask(mask))


def joint_distance_matrix(motion: jax.Array) -> jax.Array:
  """[B, T, 2, 262] de-normalised -> [B, T, 22, 22] distances, person a joint i to b joint j."""
  positions = joint_positions(motion)
  a, b = positions[:, :, 0], positions[:, :, 1]
  return _safe_norm(a[..., :, None, :] - b[..., None, :, :])


def _masked_distance_matrix_loss(pred: jax.Array, true: jax.Array, mask: jax.Array,
                                 threshold: float) -> jax.Array:
  """MSE of inter-person distance matrices on entries whose true distance is below threshold.

  Per frame: mean over the selected entries (0 when none is selected); then ``masked_mean``.
  """
  pred_dist = joint_distance_matrix(pred)
  true_dist = joint_distance_matrix(true)
  near = (true_dist < threshold).astype(pred_dist.dtype)
  per_frame = (jnp.sum(near * (pred_dist - true_dist) ** 2, axis=(-2, -1))
               / jnp.maximum(jnp.sum(near, axis=(-2, -1)), 1.0))
  return masked_mean(per_frame, mask)


def distance_map_loss(pred: jax.Array, true: jax.Array, mask: jax.Array,
                      threshold: float = DISTANCE_MAP_THRESHOLD) -> jax.Array:
  """InterGen's distance-map term: inter-person joint distances within 1 m must match.

  pred, true: [B, T, 2, 262] de-normalised; mask: [B, T]. Entries are selected by the *true*
  distance, so persons far apart in the data impose nothing whatever the prediction.
  """
  return _masked_distance_matrix_loss(pred, true, mask, threshold)


def joint_affinity_loss(pred: jax.Array, true: jax.Array, mask: jax.Array,
                        threshold: float = JOINT_AFFINITY_THRESHOLD) -> jax.Array:
  """InterGen's joint-affinity term: true contacts (joints closer than 0.1 m) must be kept.

  pred, true: [B, T, 2, 262] de-normalised; mask: [B, T]. The predicted distance is pulled to
  the true one on those entries (so identical motions give exactly 0).
  """
  return _masked_distance_matrix_loss(pred, true, mask, threshold)


def facing_directions(positions: jax.Array) -> jax.Array:
  """[..., 22, 3] -> [..., 2] unit facing direction (x, z) on the ground plane.

  forward = cross(up, right_hip - left_hip) (DESIGN §1.1), which is (across_z, 0, -across_x).
  """
  across = positions[..., skeleton.RIGHT_HIP, :] - positions[..., skeleton.LEFT_HIP, :]
  forward = jnp.stack([across[..., 2], -across[..., 0]], axis=-1)
  return forward / jnp.maximum(_safe_norm(forward)[..., None], 1e-8)


def relative_orientation(motion: jax.Array) -> jax.Array:
  """[B, T, 2, 262] de-normalised -> [B, T, 2]: (cos, sin) of the y-rotation from a's to b's facing.

  The full-angle (cos, sin) is smooth everywhere, including face to face (180 degrees).
  """
  facing = facing_directions(joint_positions(motion))  # [B, T, 2, 2] as (x, z)
  fa, fb = facing[:, :, 0], facing[:, :, 1]
  cos = jnp.sum(fa * fb, axis=-1)
  sin = fa[..., 1] * fb[..., 0] - fa[..., 0] * fb[..., 1]  # y component of cross(fa, fb)
  return jnp.stack([cos, sin], axis=-1)


def relative_orientation_loss(pred: jax.Array, true: jax.Array, mask: jax.Array) -> jax.Array:
  """InterGen's relative-orientation term: MSE of the persons' relative facing (cos, sin).

  pred, true: [B, T, 2, 262] de-normalised; mask: [B, T].
  """
  error = relative_orientation(pred) - relative_orientation(true)
  return masked_mean(error ** 2, mask)


_GEOMETRIC_FNS = {
    'velocity': velocity_loss,
    'bone_length': bone_length_loss,
    'foot_contact': foot_contact_loss,
    'distance_map': distance_map_loss,
    'joint_affinity': joint_affinity_loss,
    'relative_orientation': relative_orientation_loss,
}


def distance_regression(pred_dist: jax.Array, true_dist: jax.Array, mask: jax.Array) -> jax.Array:
  """FineDual's interaction-distance regression: MSE of the predicted part-distance matrices.

  pred_dist, true_dist: [B, T, K, K] (``body_parts.part_distances`` of the clean motion for the
  truth); mask: [B, T].
  """
  return masked_mean((pred_dist - true_dist) ** 2, mask)


def _l2_normalise(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(_safe_norm(x)[..., None], 1e-8)


def info_nce(motion_emb: jax.Array, text_emb: jax.Array, temperature: float | jax.Array, *,
             valid: jax.Array | None = None, axis_name: str | None = None) -> jax.Array:
  """Symmetric InfoNCE (CLIP loss) aligning pooled motion features with text embeddings.

  Args:
    motion_emb: [N, E] this device's motion embeddings (L2-normalised here).
    text_emb: [N, E] the matching text embeddings, row i pairs with row i.
    temperature: logits are ``m @ t.T / temperature``.
    valid: optional [N] mask; rows whose text was dropped (classifier-free-guidance dropout) are
      neither positives nor negatives anywhere. Fewer than 2 valid rows overall give 0.
    axis_name: inside ``shard_map``/``pmap``, the data axis: negatives then come from the whole
      global batch (``all_gather``), and the value returned is this device's share, scaled so
      that ``lax.pmean`` over the axis gives exactly the global-batch loss (also when devices
      hold different numbers of valid rows).

  Returns:
    Scalar: mean over valid rows of (motion->text + text->motion cross-entropy) / 2.
  """
  m = _l2_normalise(motion_emb.astype(jnp.float32))
  txt = _l2_normalise(text_emb.astype(jnp.float32))
  n = m.shape[0]
  valid = jnp.ones((n,), jnp.float32) if valid is None else valid.astype(jnp.float32)
  if axis_name is None:
    all_m, all_t, all_valid, offset = m, txt, valid, 0
  else:
    all_m = jax.lax.all_gather(m, axis_name, tiled=True)
    all_t = jax.lax.all_gather(txt, axis_name, tiled=True)
    all_valid = jax.lax.all_gather(valid, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * n
  num_shards = all_m.shape[0] // n
  labels = offset + jnp.arange(n)
  column_ok = all_valid[None, :] > 0

  def cross_entropy(queries, keys):
    logits = jnp.where(column_ok, queries @ keys.T / temperature, _MASKED_LOGIT)  # [n, N_all]
    positive = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return jax.nn.logsumexp(logits, axis=1) - positive

  per_row = 0.5 * (cross_entropy(m, all_t) + cross_entropy(txt, all_m))
  total_valid = jnp.sum(all_valid)
  loss = jnp.sum(per_row * valid) * num_shards / jnp.maximum(total_valid, 1.0)
  return jnp.where(total_valid >= 2, loss, 0.0)


def training_losses(pred_x0: jax.Array, x0: jax.Array, mask: jax.Array, t: jax.Array,
                    mean: jax.Array, std: jax.Array, weights: Mapping[str, float],
                    geometric_max_t: int,
                    extra: Mapping[str, jax.Array] | None = None) -> dict[str, jax.Array]:
  """All training loss terms with a non-zero weight, and their weighted ``total``.

  Args:
    pred_x0, x0: [B, T, 2, 262] normalised predicted and clean motion.
    mask: [B, T] float, 1 on valid frames.
    t: [B] int diffusion timesteps; the geometric terms count only where t <= geometric_max_t.
    mean, std: [262] normalisation statistics (de-normalised = x * std + mean).
    weights: static Python floats by term name (``INTERGEN_WEIGHTS`` plus FineDual's
      ``EXTRA_TERMS``); a term with weight 0 or absent is not computed.
    geometric_max_t: InterGen uses 700.
    extra: already computed scalar terms (``distance_regression``, ``individual_nce``,
      ``overall_nce``); each is reported and weighted by ``weights.get(name, 0)``.

  Returns:
    {name: scalar, ..., 'total': sum of weight * value}.
  """
  extra = dict(extra or {})
  for name, weight in weights.items():
    if name in MOTION_TERMS or name in extra:
      continue
    if name in EXTRA_TERMS:
      if weight != 0:
        raise ValueError(f"weights['{name}'] = {weight} but no '{name}' value was passed in "
                         f"`extra` (passed: {sorted(extra)}); compute it from the model's "
                         'outputs, or set its weight to 0 in the config.')
      continue
    raise ValueError(f"Unknown loss term '{name}' in weights; known terms: "
                     f'{list(MOTION_TERMS) + list(EXTRA_TERMS)}. Fix the name in the config.')
  pred_x0 = pred_x0.astype(jnp.float32)
  x0 = x0.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  terms = {}
  if weights.get('simple', 0.0) != 0:
    terms['simple'] = masked_mean((pred_x0 - x0) ** 2, mask)
  geometric = [name for name in GEOMETRIC_TERMS if weights.get(name, 0.0) != 0]
  if geometric:
    pred = pred_x0 * std + mean
    true = x0 * std + mean
    geometric_mask = mask * (t <= geometric_max_t)[:, None].astype(mask.dtype)
    for name in geometric:
      terms[name] = _GEOMETRIC_FNS[name](pred, true, geometric_mask)
  terms.update(extra)
  terms['total'] = sum((weights.get(name, 0.0) * value for name, value in terms.items()),
                       jnp.zeros((), jnp.float32))
  return terms
