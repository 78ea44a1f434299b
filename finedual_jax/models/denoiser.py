"""The FineDual denoiser: individual, inter-individual and overall stages over two motion streams.

One set of per-person weights is applied to the persons stacked along the batch axis; the
"other person" of a stream is the same stack flipped. Swapping the persons (and their texts)
therefore swaps the output exactly: the symmetry is structural.

This is the walking-skeleton version: the Self-Learning stage (per-person text
cross-attention), cooperative layers for the Adaptive Adjustment stage and the Teacher-Guided
Refinement stage. The interaction distance predictor, the interaction graph and the auxiliary
contrastive losses plug in between the stages (see DESIGN §2).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from finedual_jax.models import layers
from finedual_jax.models.text_encoder import TextEncoder


class Block(nn.Module):
  """AdaLN transformer block: self-attention over time, optional cross-attention, FFN."""
  num_heads: int
  ff_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, x_mask, cond, context=None, context_mask=None, *, deterministic: bool):
    """x: [N, T, d]; x_mask: [N, T]; cond: [N, d]; context: [N, S, d]; context_mask: [N, S]."""

    def attend(query, kv, kv_mask, name):
      return nn.MultiHeadDotProductAttention(
          self.num_heads, dropout_rate=self.dropout, deterministic=deterministic, name=name)(
              query, kv, mask=layers.attention_mask(x_mask, kv_mask))

    h, gate = layers.AdaLN(name='ln_self')(x, cond)
    x = x + gate * attend(h, h, x_mask, 'self_attn')
    if context is not None:
      h, gate = layers.AdaLN(name='ln_cross')(x, cond)
      x = x + gate * attend(h, context, context_mask, 'cross_attn')
    h, gate = layers.AdaLN(name='ln_ffn')(x, cond)
    return x + gate * layers.FeedForward(self.ff_dim, self.dropout, name='ffn')(
        h, deterministic=deterministic)


def _other(streams: jax.Array) -> jax.Array:
  """[2B, ...] persons stacked as (b0p0, b0p1, b1p0, ...) -> each stream's partner."""
  shaped = streams.reshape(-1, 2, *streams.shape[1:])
  return shaped[:, ::-1].reshape(streams.shape)


class FineDualDenoiser(nn.Module):
  """Predicts the clean motion x0 of both persons from a noisy one and the texts."""
  vocab_size: int
  feature_dim: int = 262
  width: int = 256
  num_heads: int = 4
  ff_dim: int = 512
  individual_layers: int = 2
  interaction_layers: int = 2
  refinement_layers: int = 2
  text_width: int = 256
  text_layers: int = 2
  text_heads: int = 4
  max_text_len: int = 32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x_t, t, mask, text_tokens, person_tokens, drop_overall=None,
               drop_individual=None, *, deterministic: bool = True):
    """x_t: [B, T, 2, D]; t: [B]; mask: [B, T]; text_tokens: [B, L]; person_tokens: [B, 2, L];
    drop_overall / drop_individual: [B] bool, replace that condition by the learned null one.

    Returns x0 [B, T, 2, D].
    """
    batch, frames = x_t.shape[:2]
    if drop_overall is None:
      drop_overall = jnp.zeros((batch,), bool)
    if drop_individual is None:
      drop_individual = jnp.zeros((batch,), bool)

    # One encoder pass over all three texts; roles: 0 overall, 1 individual (no person identity,
    # which would break the person-swap symmetry).
    length = text_tokens.shape[-1]
    all_tokens = jnp.concatenate([text_tokens, person_tokens.reshape(2 * batch, length)])
    roles = jnp.concatenate([jnp.zeros((batch,), jnp.int32), jnp.ones((2 * batch,), jnp.int32)])
    encoder = TextEncoder(self.vocab_size, self.text_width, self.text_layers, self.text_heads,
                          self.max_text_len, self.dropout, name='text_encoder')
    tok, pooled, tok_mask = encoder(all_tokens, roles, deterministic=deterministic)
    project = nn.Dense(self.width, name='text_proj')
    tok, pooled = project(tok), project(pooled)
    null_tok = self.param('null_text', nn.initializers.normal(0.02), (2, self.width))
    drop = jnp.concatenate([drop_overall, jnp.repeat(drop_individual, 2)])
    null_role = jnp.concatenate([jnp.zeros((batch,), jnp.int32), jnp.ones((2 * batch,), jnp.int32)])
    tok = jnp.where(drop[:, None, None], null_tok[null_role][:, None, :], tok)
    tok_mask = jnp.where(drop[:, None], jnp.arange(length)[None, :] == 0, tok_mask)
    pooled = jnp.where(drop[:, None], null_tok[null_role], pooled)
    overall_tok, person_tok = tok[:batch], tok[batch:]                # [B, L, d], [2B, L, d]
    overall_mask, person_mask = tok_mask[:batch], tok_mask[batch:]
    overall_pooled, person_pooled = pooled[:batch], pooled[batch:]

    # Persons stacked on the batch axis: [2B, T, ...] in (b0p0, b0p1, b1p0, ...) order.
    streams_in = x_t.transpose(0, 2, 1, 3).reshape(2 * batch, frames, self.feature_dim)
    stream_mask = jnp.repeat(mask, 2, axis=0)
    time_cond = jnp.repeat(layers.TimestepEmbedding(self.width, name='time_embed')(t), 2, axis=0)
    h = nn.Dense(self.width, name='motion_in')(streams_in)
    h = h + layers.sinusoidal_embedding(jnp.arange(frames), self.width)[None]

    # Self-Learning stage: each person with its own text.
    individual_cond = time_cond + person_pooled
    for i in range(self.individual_layers):
      h = Block(self.num_heads, self.ff_dim, self.dropout, name=f'individual_{i}')(
          h, stream_mask, individual_cond, person_tok, person_mask, deterministic=deterministic)

    # Adaptive Adjustment stage: cooperative layers attending to the other person.
    overall_cond = time_cond + jnp.repeat(overall_pooled, 2, axis=0)
    for i in range(self.interaction_layers):
      h = Block(self.num_heads, self.ff_dim, self.dropout, name=f'interaction_{i}')(
          h, stream_mask, overall_cond, _other(h), _other(stream_mask),
          deterministic=deterministic)

    # Teacher-Guided Refinement stage: the overall caption.
    overall_tok2 = jnp.repeat(overall_tok, 2, axis=0)
    overall_mask2 = jnp.repeat(overall_mask, 2, axis=0)
    for i in range(self.refinement_layers):
      h = Block(self.num_heads, self.ff_dim, self.dropout, name=f'refinement_{i}')(
          h, stream_mask, overall_cond, overall_tok2, overall_mask2, deterministic=deterministic)

    h = nn.LayerNorm(name='ln_out')(h)
    out = nn.Dense(self.feature_dim, kernel_init=nn.initializers.zeros, name='head')(h)
    return out.reshape(batch, 2, frames, self.feature_dim).transpose(0, 2, 1, 3)
