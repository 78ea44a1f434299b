"""Pieces every denoiser shares: the AdaLN transformer block and the two-stream layout.

Streams: the two persons are stacked on the batch axis, [2B, T, ...] in (b0p0, b0p1, b1p0, ...)
order, so one set of weights serves both persons and ``partner`` flips each pair.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from finedual_jax.models import dense
from finedual_jax.models import layers


class Block(nn.Module):
  """AdaLN transformer block: self-attention over time, optional cross-attention, FFN.

  ``cond`` modulates the self-attention and FFN; ``cross_cond`` (default: ``cond``) the
  cross-attention, so a block can take its two conditions from different texts (in2IN).
  """
  num_heads: int
  ff_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, x_mask, cond, context=None, context_mask=None, *, cross_cond=None,
               deterministic: bool):
    """x: [N, T, d]; x_mask: [N, T]; cond: [N, d]; context: [N, S, d]; context_mask: [N, S]."""

    def attend(query, kv, kv_mask, name):
      return dense.MultiHeadAttention(
          self.num_heads, dropout_rate=self.dropout, deterministic=deterministic,
          attention_fn=layers.attention, name=name)(
              query, kv, mask=layers.attention_mask(x_mask, kv_mask))

    h, gate = layers.AdaLN(name='ln_self')(x, cond)
    x = x + gate * attend(h, h, x_mask, 'self_attn')
    if context is not None:
      h, gate = layers.AdaLN(name='ln_cross')(x, cond if cross_cond is None else cross_cond)
      x = x + gate * attend(h, context, context_mask, 'cross_attn')
    h, gate = layers.AdaLN(name='ln_ffn')(x, cond)
    return x + gate * layers.FeedForward(self.ff_dim, self.dropout, name='ffn')(
        h, deterministic=deterministic)


class _PositionalBlock(Block):
  """``Block`` with every argument positional, so remat can hold ``deterministic`` static."""

  def __call__(self, x, x_mask, cond, context, context_mask, cross_cond, deterministic):
    return super().__call__(x, x_mask, cond, context, context_mask, cross_cond=cross_cond,
                            deterministic=deterministic)


_RematBlock = nn.remat(_PositionalBlock, static_argnums=(7,))  # Argument 0 is the module.


def block(num_heads: int, ff_dim: int, dropout: float, *, remat: bool, name: str):
  """A ``Block``; with ``remat`` its activations are recomputed in the backward pass (less
  memory for about a third more FLOPs). The parameters are the same either way."""
  if not remat:
    return Block(num_heads, ff_dim, dropout, name=name)
  inner = _RematBlock(num_heads, ff_dim, dropout, name=name)

  def call(x, x_mask, cond, context=None, context_mask=None, *, cross_cond=None,
           deterministic: bool):
    return inner(x, x_mask, cond, context, context_mask, cross_cond, deterministic)

  return call


def partner(streams: jax.Array) -> jax.Array:
  """[2B, ...] stacked streams -> each stream's partner (the other person of its pair)."""
  shaped = streams.reshape(-1, 2, *streams.shape[1:])
  return shaped[:, ::-1].reshape(streams.shape)


def to_streams(x: jax.Array) -> jax.Array:
  """[B, T, 2, D] -> [2B, T, D]."""
  batch, frames = x.shape[:2]
  return x.transpose(0, 2, 1, 3).reshape(2 * batch, frames, x.shape[-1])


def from_streams(h: jax.Array) -> jax.Array:
  """[2B, T, D] -> [B, T, 2, D]."""
  return h.reshape(-1, 2, *h.shape[1:]).transpose(0, 2, 1, 3)


def masked_pool(h: jax.Array, mask: jax.Array) -> jax.Array:
  """[N, T, d], [N, T] -> [N, d] mean over valid frames."""
  weights = mask.astype(h.dtype)[..., None]
  return jnp.sum(h * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class MotionIn(nn.Module):
  """Noisy motion streams [2B, T, D] -> hidden [2B, T, d] with sinusoidal frame positions."""
  width: int

  @nn.compact
  def __call__(self, streams: jax.Array) -> jax.Array:
    h = dense.Dense(self.width, name='proj')(streams)
    positions = layers.sinusoidal_embedding(jnp.arange(streams.shape[1]), self.width)
    return h + positions[None].astype(h.dtype)


class MotionOut(nn.Module):
  """Hidden [2B, T, d] -> x0 [2B, T, D]; zero-initialised, so training starts from x0 = 0."""
  feature_dim: int

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    h = nn.LayerNorm(name='ln')(h)
    return dense.Dense(self.feature_dim, kernel_init=nn.initializers.zeros, name='proj')(h)
