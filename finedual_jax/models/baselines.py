"""Baselines in the same code base: InterGen's cooperative denoiser and an in2IN-style one.

Both share FineDual's two-stream layout (so person-swap symmetry holds) and return the same
``(x0, aux)`` pair; their ``aux`` is empty, so FineDual's auxiliary losses do not apply.

- InterGen (Liang et al. 2024): every block attends to itself over time and to the other
  person, modulated by the timestep and the overall caption; per-person texts are not used.
- in2IN-style (Ruiz-Ponce et al. 2024): the individual texts condition the self-attention and
  FFN of each person's stream, the overall caption conditions the cross-attention to the other
  person.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from finedual_jax.models import blocks
from finedual_jax.models import layers
from finedual_jax.models.conditioning import TextConditioner


class _CooperativeDenoiser(nn.Module):
  """Shared skeleton: text conditions, ``num_layers`` cooperative blocks, zero head."""
  vocab_size: int
  feature_dim: int = 262
  width: int = 1024
  num_heads: int = 8
  ff_dim: int = 2048
  num_layers: int = 8
  text_width: int = 512
  text_layers: int = 4
  text_heads: int = 8
  max_text_len: int = 32
  dropout: float = 0.1
  remat: bool = False  # Recompute block activations in the backward pass.
  uses_individual_texts = False

  @nn.compact
  def __call__(self, x_t, t, mask, text_tokens, person_tokens, drop_overall=None,
               drop_individual=None, *, deterministic: bool = True):
    """Same inputs as ``FineDualDenoiser``; returns (x0 [B, T, 2, D], {})."""
    batch = x_t.shape[0]
    drop_overall = jnp.zeros((batch,), bool) if drop_overall is None else drop_overall
    drop_individual = jnp.zeros((batch,), bool) if drop_individual is None else drop_individual
    cond = TextConditioner(self.vocab_size, self.width, self.text_width, self.text_layers,
                           self.text_heads, self.max_text_len, self.dropout,
                           individual=self.uses_individual_texts, name='text')(
                               text_tokens, person_tokens, drop_overall, drop_individual,
                               deterministic=deterministic)
    stream_mask = jnp.repeat(mask, 2, axis=0)
    time_cond = jnp.repeat(layers.TimestepEmbedding(self.width, name='time_embed')(t, x_t.dtype), 2, axis=0)
    overall_cond = time_cond + jnp.repeat(cond.overall_pooled, 2, axis=0)
    self_cond = time_cond + cond.person_pooled if self.uses_individual_texts else overall_cond
    h = blocks.MotionIn(self.width, name='motion_in')(blocks.to_streams(x_t))
    for i in range(self.num_layers):
      h = blocks.block(self.num_heads, self.ff_dim, self.dropout, remat=self.remat,
                       name=f'block_{i}')(
          h, stream_mask, self_cond, blocks.partner(h), blocks.partner(stream_mask),
          cross_cond=overall_cond, deterministic=deterministic)
    return blocks.from_streams(blocks.MotionOut(self.feature_dim, name='head')(h)), {}


class InterGenDenoiser(_CooperativeDenoiser):
  """InterGen's cooperative denoiser: overall caption only (paper: 8 layers, 1024 wide)."""
  uses_individual_texts = False


class In2INDenoiser(_CooperativeDenoiser):
  """in2IN-style: individual texts modulate self-attention/FFN, the caption the cross-attention."""
  uses_individual_texts = True
