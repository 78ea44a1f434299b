"""Building blocks shared by the text encoder and the denoisers."""

from __future__ import annotations

import contextlib
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from finedual_jax.models import chunked_attention
from finedual_jax.models import cpu_attention
from finedual_jax.models import dense
from finedual_jax.models import dropout


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
    h = dense.Dense(self.width)(sinusoidal_embedding(t, self.width).astype(dtype))
    return dense.Dense(self.width)(nn.silu(h))


class FeedForward(nn.Module):
  """Position-wise MLP with GELU."""
  hidden: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    width = x.shape[-1]
    h = nn.gelu(dense.Dense(self.hidden)(x))
    h = dropout.Dropout(self.dropout)(h, deterministic=deterministic)
    return dense.Dense(width)(h)


class AdaLN(nn.Module):
  """LayerNorm whose scale and shift come from a conditioning vector (zero-initialised).

  Also returns a gate for the residual branch, zero at initialisation (adaLN-Zero, Peebles &
  Xie 2023), so every block starts as the identity.
  """

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x: [N, T, d]; cond: [N, c] -> (modulated x [N, T, d], gate [N, 1, d])."""
    width = x.shape[-1]
    params = dense.Dense(3 * width, kernel_init=nn.initializers.zeros)(nn.silu(cond))
    shift, scale, gate = jnp.split(params[:, None, :], 3, axis=-1)
    normed = nn.LayerNorm(use_scale=False, use_bias=False)(x)
    return normed * (1.0 + scale) + shift, gate


IMPLEMENTATIONS = ('auto', 'kernel', 'chunked', 'xla')
_default_implementation = ['auto']


def _checked(name: str) -> str:
  if name not in IMPLEMENTATIONS:
    raise ValueError(f'attention implementation: expected one of {IMPLEMENTATIONS}, found '
                     f'{name!r}.')
  return name


@contextlib.contextmanager
def attention_implementation(name: str):
  """Within the block, attention traced with no explicit implementation uses ``name``
  (e.g. 'xla' to count FLOPs: XLA's cost analysis counts the chunked version's loop once)."""
  _checked(name)
  previous = _default_implementation[0]
  _default_implementation[0] = name
  try:
    yield
  finally:
    _default_implementation[0] = previous


def attention(query, key, value, bias=None, mask=None, *, dropout_rng=None,
              dropout_rate: float = 0.0, broadcast_dropout: bool = True,
              deterministic: bool = True, dtype=None, precision=None,
              implementation: str | None = None):
  """``attention_fn`` for flax's MultiHeadDotProductAttention.

  ``implementation``: 'kernel' is ``cpu_attention`` (a fused C++ kernel for XLA:CPU, built on
  first use; float32, head sizes a multiple of 16); 'chunked' is ``chunked_attention`` (a few
  examples at a time with a hand-written backward pass: 2-3x faster on CPU than XLA's
  textbook version, which runs as memory-bound passes over the whole score tensor); 'xla' is
  ``jax.nn.dot_product_attention`` without attention dropout (JAX may lower it to a fused
  kernel, cuDNN's on GPU) and flax's implementation with it; 'auto' picks 'kernel' on CPU
  where the kernel is available and supports the inputs, else 'chunked', and 'xla' elsewhere;
  None, the default, is 'auto' unless ``attention_implementation`` says otherwise. All
  compute the same function. Every keyword flax may pass is named:
  flax hands an ``attention_fn`` only the keywords its signature lists (``**kwargs`` would
  silently lose ``dropout_rng``).
  """
  implementation = _checked(implementation or _default_implementation[0])
  if implementation == 'auto':
    if jax.default_backend() != 'cpu':
      implementation = 'xla'
    elif (bias is None and cpu_attention.supports(query, key, value)
          and cpu_attention.available()):
      implementation = 'kernel'
    else:
      implementation = 'chunked'
  rate = 0.0 if deterministic else dropout_rate
  if implementation == 'kernel' and bias is None:
    return cpu_attention.dot_product_attention(query, key, value, mask,
                                               dropout_rng=dropout_rng, dropout_rate=rate)
  if implementation == 'chunked' and bias is None:  # No block here passes an additive bias.
    return chunked_attention.dot_product_attention(query, key, value, mask,
                                                   dropout_rng=dropout_rng, dropout_rate=rate)
  if implementation == 'xla' and rate == 0.0:
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
