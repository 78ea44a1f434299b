"""The cosine noise schedule (Nichol & Dhariwal 2021) and the forward process q(x_t | x_0).

Tables are computed in float64 with NumPy and cast to the array's dtype where they are used.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """[num_steps] float64 cumulative products of alphas, from betas clipped at ``max_beta``."""
  steps = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
  betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
  return np.cumprod(1.0 - betas)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Diffusion schedule tables (float64 NumPy) for ``num_steps`` steps."""
  num_steps: int
  alphas_cumprod: np.ndarray

  @classmethod
  def cosine(cls, num_steps: int = 1000) -> 'Schedule':
    return cls(num_steps, cosine_alphas_cumprod(num_steps))

  def coefficients(self, t: jax.Array, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """[B] integer timesteps -> (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)), each [B]."""
    table = jnp.asarray(np.stack([np.sqrt(self.alphas_cumprod),
                                  np.sqrt(1.0 - self.alphas_cumprod)]), dtype)
    return table[0, t], table[1, t]


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Draws x_t ~ q(x_t | x_0) with the given noise; x0, noise: [B, ...]; t: [B]."""
  signal, sigma = schedule.coefficients(t, x0.dtype)
  expand = (slice(None),) + (None,) * (x0.ndim - 1)
  return signal[expand] * x0 + sigma[expand] * noise
