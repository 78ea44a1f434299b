"""Attention computed a few examples at a time, for CPUs.

XLA on CPU runs the textbook attention (scores, mask, softmax, weighted sum) as separate passes
over the whole [batch, heads, T, T] score tensor: at T = 300 and width 512 that is tens of MB
per pass, so the step waits on memory (measured: 28 GFLOP/s forward against a 210 GFLOP/s
matmul rate). Here the examples are processed in chunks whose score block is a few MB, and the
backward pass is written out (flash-attention style, with a ``custom_vjp``): it recomputes each
chunk's probabilities from the saved log-sum-exp instead of keeping the [B, H, T, T]
probabilities, so it also needs far less memory.

The chunks are cut along the batch axis of the [batch, length, heads, head_dim] layout that the
projections produce, so each chunk's slice and its transposition to (head, length) order are one
small copy that XLA fuses, and the heads are never transposed as whole tensors. On a 2-core Intel
Xeon this took a guided DDIM-50 run at the ``bench`` size 5% less time than chunks of
(example, head) pairs cut from head-major copies of q, k and v (forward and backward of one
[32, 300, 8, 64] attention: 218 against 249 ms).

Attention dropout is supported: each chunk's keep-mask comes from ``fold_in(rng, chunk)`` through
``dropout.keep_mask`` (hashed bits: threefry's random bits, not FLOPs, dominated dropout on a
CPU) and is kept, one byte per score, for the backward pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from finedual_jax.models import dropout

CHUNK_BYTES = 8 << 20
"""Target size of one chunk's float32 score block. Forward and backward of a [32, 300, 8, 64]
attention on a 2-core Intel Xeon (2 MB L2 per core): 244 ms at 2 MB (one example per chunk),
218 ms at 8 MB (two), 232 ms at 16 MB (four)."""


def chunk_size(batch: int, heads: int, q_len: int, k_len: int,
               target_bytes: int | None = None) -> int:
  """The largest divisor of ``batch`` whose [chunk, heads, q_len, k_len] float32 block fits
  ``target_bytes`` (default ``CHUNK_BYTES``; at least 1)."""
  target_bytes = CHUNK_BYTES if target_bytes is None else target_bytes
  limit = max(1, target_bytes // (4 * heads * q_len * k_len))
  return max(d for d in range(1, min(batch, limit) + 1) if batch % d == 0)


def _logits(q, k, mask, scale):
  s = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32) * scale
  # jax.nn.dot_product_attention's fill: a fully masked row becomes uniform, never NaN.
  return jnp.where(mask, s, jnp.float32(-0.7 * jnp.finfo(jnp.float32).max))


def _forward_chunk(q, k, v, mask, rng, index, *, scale, rate):
  s = _logits(q, k, mask, scale)
  m = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.exp(s - m)
  total = jnp.sum(e, axis=-1, keepdims=True)
  p = e / total
  keep = None
  if rate:
    keep = dropout.keep_mask(jax.random.fold_in(rng, index), p.shape, rate)
    p = jnp.where(keep, p / dropout.keep_probability(rate), 0.0)
  out = jnp.einsum('bhqk,bkhd->bqhd', p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype), (m + jnp.log(total))[..., 0], keep


def _backward_chunk(q, k, v, mask, keep, out, lse, d_out, *, scale, rate):
  p = jnp.exp(_logits(q, k, mask, scale) - lse[..., None])
  d_p = jnp.einsum('bqhd,bkhd->bhqk', d_out, v, preferred_element_type=jnp.float32)
  if rate:
    p_used = jnp.where(keep, p / dropout.keep_probability(rate), 0.0)
    d_p = jnp.where(keep, d_p / dropout.keep_probability(rate), 0.0)
  else:
    p_used = p
  d_v = jnp.einsum('bhqk,bqhd->bkhd', p_used.astype(d_out.dtype), d_out,
                   preferred_element_type=jnp.float32)
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [b, q, h]
  d_s = (p * (d_p - jnp.swapaxes(delta, 1, 2)[..., None]) * scale).astype(q.dtype)
  d_q = jnp.einsum('bhqk,bkhd->bqhd', d_s, k, preferred_element_type=jnp.float32)
  d_k = jnp.einsum('bhqk,bqhd->bkhd', d_s, q, preferred_element_type=jnp.float32)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


def _split(x, chunk):
  return x.reshape(x.shape[0] // chunk, chunk, *x.shape[1:])


def _merge(x):
  return x.reshape(-1, *x.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _attention(q, k, v, mask, rng, scale, rate, chunk):
  return _attention_fwd(q, k, v, mask, rng, scale, rate, chunk)[0]


def _attention_fwd(q, k, v, mask, rng, scale, rate, chunk):
  def body(args):
    index, qc, kc, vc, mc = args
    return _forward_chunk(qc, kc, vc, mc, rng, index, scale=scale, rate=rate)

  indices = jnp.arange(q.shape[0] // chunk)
  out, lse, keep = jax.lax.map(body, (indices, *(_split(x, chunk) for x in (q, k, v, mask))))
  # keep, out and lse stay stacked per chunk, as the backward loop reads them.
  return _merge(out), (q, k, v, mask, keep, out, lse)


def _attention_bwd(scale, rate, chunk, residuals, d_out):
  q, k, v, mask, keep, out, lse = residuals

  def body(args):  # (q, k, v, mask, keep, out, lse, d_out) of one chunk.
    return _backward_chunk(*args, scale=scale, rate=rate)

  chunks = [_split(x, chunk) for x in (q, k, v, mask)]
  grads = jax.lax.map(body, (*chunks, keep, out, lse, _split(d_out, chunk)))
  d_q, d_k, d_v = (_merge(g) for g in grads)
  return d_q, d_k, d_v, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def example_mask(mask: jax.Array | None, query: jax.Array, key: jax.Array,
                 dropout_rng: jax.Array | None, dropout_rate: float, who: str) -> jax.Array:
  """The boolean ``mask`` (None: all keys) broadcast along the batch to [batch, 1 or heads,
  1 or q_len, k_len], after checking it and that dropout has its ``dropout_rng``; errors name
  ``who``."""
  batch, q_len, heads, _ = query.shape
  k_len = key.shape[1]
  if dropout_rate and dropout_rng is None:
    raise ValueError(f'{who}: dropout_rate > 0 needs a dropout_rng.')
  if mask is None:
    mask = jnp.ones((1, 1, 1, k_len), bool)
  if (mask.ndim != 4 or mask.shape[0] not in (1, batch) or mask.shape[1] not in (1, heads)
      or mask.shape[2] not in (1, q_len) or mask.shape[3] != k_len):
    raise ValueError(f'{who}: mask shape {mask.shape} does not broadcast to '
                     f'{(batch, heads, q_len, k_len)}.')
  return jnp.broadcast_to(mask.astype(bool), (batch, *mask.shape[1:]))


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          mask: jax.Array | None = None, *, dropout_rng: jax.Array | None = None,
                          dropout_rate: float = 0.0) -> jax.Array:
  """``jax.nn.dot_product_attention`` (layout [batch, length, heads, head_dim], boolean
  ``mask`` broadcastable to [batch, heads, q_len, k_len]) computed chunk by chunk, with
  attention dropout when ``dropout_rate`` > 0 (then ``dropout_rng`` is required)."""
  batch, q_len, heads, depth = query.shape
  k_len = key.shape[1]
  # Heads and query rows stay broadcast: each chunk's select broadcasts them.
  mask = example_mask(mask, query, key, dropout_rng, dropout_rate, 'chunked attention')
  rng = jax.random.key(0) if dropout_rng is None else dropout_rng
  return _attention(query, key, value, mask, rng, 1.0 / float(depth) ** 0.5,
                    float(dropout_rate), chunk_size(batch, heads, q_len, k_len))
