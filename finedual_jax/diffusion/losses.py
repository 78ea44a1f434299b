"""Training losses, masked to valid frames and normalised per example.

Every term is a mean over examples of a per-example mean over that example's valid frames, so a
batch split across devices and averaged with ``lax.pmean`` gives exactly the global value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from finedual_jax.motion import features as features_lib


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """values [B, T, ...], mask [B, T] -> scalar: mean over examples of per-example masked means."""
  per_frame = values.reshape(*values.shape[:2], -1).mean(axis=-1)
  per_example = jnp.sum(per_frame * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  return jnp.mean(per_example)


def diffusion_losses(pred_x0: jax.Array, x0: jax.Array, mask: jax.Array, t: jax.Array,
                     mean: jax.Array, std: jax.Array, *, velocity_weight: float,
                     geometric_max_t: int) -> dict[str, jax.Array]:
  """Named loss terms and their weighted ``total``.

  pred_x0, x0: [B, T, 2, 262] normalised; mask: [B, T]; t: [B]; mean, std: [262].
  ``simple`` is the x0 MSE; ``velocity`` compares frame-to-frame joint displacements of the
  de-normalised positions (InterGen's velocity term), only for t <= ``geometric_max_t``.
  """
  simple = masked_mean((pred_x0 - x0) ** 2, mask)
  positions = lambda x: (x * std + mean)[..., features_lib.POSITIONS]
  pred_vel = jnp.diff(positions(pred_x0), axis=1)
  true_vel = jnp.diff(positions(x0), axis=1)
  pair_mask = mask[:, 1:] * mask[:, :-1]
  pair_mask = pair_mask * (t <= geometric_max_t)[:, None].astype(mask.dtype)
  velocity = masked_mean((pred_vel - true_vel) ** 2, pair_mask)
  return {'simple': simple, 'velocity': velocity,
          'total': simple + velocity_weight * velocity}
