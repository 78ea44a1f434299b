"""Building blocks shared by the text encoder and the denoisers."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def sinusoidal_embedding(positions: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """[...] positions or timesteps -> [..., dim] sine/cosine features (Vaswani et al. 2017)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimestepEmbedding(nn.Module):
  """Diffusion timestep [B] -> conditioning vector [B, width] (in ``dtype``)."""
  width: int

  @nn.compact
  def __call__(self, t: jax.Array, dtype=jnp.float32) -> jax.Array:
    h = nn.Dense(self.width)(sinusoidal_embedding(t, self.width).astype(dtype))
    return nn.Dense(self.width)(nn.silu(h))


class FeedForward(nn.Module):
  """Position-wise MLP with GELU."""
  hidden: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    width = x.shape[-1]
    h = nn.gelu(nn.Dense(self.hidden)(x))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return nn.Dense(width)(h)


class AdaLN(nn.Module):
  """LayerNorm whose scale and shift come from a conditioning vector (zero-initialised).

  Also returns a gate for the residual branch, zero at initialisation (adaLN-Zero, Peebles &
  Xie 2023), so every block starts as the identity.
  """

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: [N, T, d]; cond: [N, c] -> (modulated x [N, T, d], gate [N, 1, d])."""
    width = x.shape[-1]
    params = nn.Dense(3 * width, kernel_init=nn.initializers.zeros)(nn.silu(cond))
    shift, scale, gate = jnp.split(params[:, None, :], 3, axis=-1)
    normed = nn.LayerNorm(use_scale=False, use_bias=False)(x)
    return normed * (1.0 + scale) + shift, gate


def attention(query, key, value, bias=None, mask=None, *, dropout_rng=None,
              dropout_rate: float = 0.0, broadcast_dropout: bool = True,
              deterministic: bool = True, dtype=None, precision=None):
  """``attention_fn`` for flax's MultiHeadDotProductAttention.

  Without attention dropout (sampling, evaluation, dropout 0) it is
  ``jax.nn.dot_product_attention``, which JAX may lower to a fused kernel (cuDNN's on GPU);
  with dropout, flax's own implementation, which supports it. Both compute the same function.
  Every keyword is named: flax passes an ``attention_fn`` only the keywords its signature
  lists (``**kwargs`` would silently lose ``dropout_rng``).
  """
  if deterministic or dropout_rate == 0.0:
    dtype = jnp.result_type(query, key, value)  # The fused kernel wants one dtype.
    query, key, value = (a.astype(dtype) for a in (query, key, value))
    return jax.nn.dot_product_attention(query, key, value, bias, mask)
  return nn.dot_product_attention(query, key, value, bias, mask, dropout_rng=dropout_rng,
                                  dropout_rate=dropout_rate,
                                  broadcast_dropout=broadcast_dropout,
                                  deterministic=deterministic, dtype=dtype, precision=precision)


def attention_mask(query_mask: jax.Array, key_mask: jax.Array) -> jax.Array:
  """[N, Tq], [N, Tk] validity -> [N, 1, Tq, Tk] boolean mask (padded keys are never attended)."""
  del query_mask  # Padded query rows are masked out by the losses; they may attend freely.
  return key_mask[:, None, None, :].astype(bool)
