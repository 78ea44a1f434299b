"""DDIM sampling (Song et al. 2021, eta = 0) with multi-weight classifier-free guidance.

The whole sampler is one ``lax.scan``; the three guidance branches (unconditional, overall text
only, individual texts only) run as one forward pass over a 3x batch, and are combined as
``u + w_o (c_o - u) + w_i (c_i - u)``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from finedual_jax.diffusion.schedule import Schedule

# denoise(x_t [N, T, 2, D], t [N], drop_overall [N], drop_individual [N]) -> x0 [N, T, 2, D].
DenoiseFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def ddim_timesteps(num_steps: int, ddim_steps: int) -> np.ndarray:
  """Descending timesteps visited by DDIM, from num_steps - 1 down to 0."""
  if not 1 <= ddim_steps <= num_steps:
    raise ValueError(f'ddim_steps must be in [1, {num_steps}], found {ddim_steps}.')
  return np.round(np.linspace(num_steps - 1, 0, ddim_steps)).astype(np.int32)


def guided_denoiser(denoise: DenoiseFn, w_overall: float, w_individual: float) -> Callable:
  """Wraps ``denoise`` into a guided x0 predictor (one batched call for the three branches)."""

  def guided(x_t: jax.Array, t: jax.Array) -> jax.Array:
    batch = x_t.shape[0]
    no, yes = jnp.ones((batch,), bool), jnp.zeros((batch,), bool)
    drop_overall = jnp.concatenate([no, yes, no])      # branches: uncond, overall, individual
    drop_individual = jnp.concatenate([no, no, yes])
    x0 = denoise(jnp.concatenate([x_t] * 3), jnp.concatenate([t] * 3), drop_overall,
                 drop_individual)
    uncond, overall, individual = jnp.split(x0, 3)
    return uncond + w_overall * (overall - uncond) + w_individual * (individual - uncond)

  return guided


def ddim_sample(predict_x0: Callable[[jax.Array, jax.Array], jax.Array], schedule: Schedule,
                noise: jax.Array, ddim_steps: int) -> jax.Array:
  """Runs DDIM from ``noise`` [B, ...] to x0 with an x0 predictor ``predict_x0(x_t, t)``."""
  steps = ddim_timesteps(schedule.num_steps, ddim_steps)
  prev = np.append(steps[1:], -1)
  alpha_bar = np.append(schedule.alphas_cumprod, 1.0)  # Index -1 -> alpha_bar = 1 (clean).
  coeffs = jnp.asarray(np.stack([np.sqrt(alpha_bar[steps]), np.sqrt(1 - alpha_bar[steps]),
                                 np.sqrt(alpha_bar[prev]), np.sqrt(1 - alpha_bar[prev])], 1),
                       noise.dtype)

  def step(x_t, inputs):
    t, (a_t, s_t, a_prev, s_prev) = inputs
    x0 = predict_x0(x_t, jnp.full((x_t.shape[0],), t, jnp.int32))
    eps = (x_t - a_t * x0) / s_t
    return (a_prev * x0 + s_prev * eps).astype(x_t.dtype), None

  x, _ = jax.lax.scan(step, noise, (jnp.asarray(steps), tuple(coeffs.T)))
  return x
