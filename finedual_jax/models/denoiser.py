"""The FineDual denoiser: individual, inter-individual and overall stages over two motion streams.

1. Self-Learning stage: per-person layers, each person attending to its own text.
2. Adaptive Adjustment stage: a distance predictor estimates per-frame body-part distances
   between the persons; an interaction graph over both persons' parts passes messages gated by
   those distances; cooperative layers then attend to the other person (InterGen's blocks).
3. Teacher-Guided Refinement stage: layers attending to the overall caption.

One set of per-person weights serves both persons (streams stacked on the batch axis), so
swapping the persons and their texts swaps the output exactly.

Hypotheses (DESIGN §2, paper text unavailable), each a field: K = 5 body parts; the distance
gate ``sigmoid((D_K - d) / tau)`` with D_K = 1 m; contrastive embeddings pooled by masked mean.
Ablations: ``use_distance_predictor=False`` (ungated graph), ``use_graph=False``,
``use_refinement=False``; "no stage-1 alignment" is a loss weight (config.losses).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from finedual_jax.models import blocks
from finedual_jax.models import dense
from finedual_jax.models import layers
from finedual_jax.models.conditioning import TextConditioner
from finedual_jax.models.distance_predictor import DistancePredictor
from finedual_jax.models.interaction_graph import InteractionGraph


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
  num_parts: int = 5
  graph_hidden: int = 64
  graph_rounds: int = 2
  graph_message_passing: str = 'jraph'  # or 'dense' (models/interaction_graph.py); same function.
  distance_threshold: float = 1.0    # D_K (hyp.), metres.
  distance_temperature: float = 0.1  # tau (hyp.), metres.
  use_distance_predictor: bool = True
  use_graph: bool = True
  use_refinement: bool = True
  embed_dim: int = 128               # Contrastive (InfoNCE) embedding size.
  remat: bool = False                # Recompute block activations in the backward pass.

  @nn.compact
  def __call__(self, x_t, t, mask, text_tokens, person_tokens, drop_overall=None,
               drop_individual=None, *, deterministic: bool = True):
    """x_t: [B, T, 2, D]; t: [B]; mask: [B, T]; text_tokens: [B, L]; person_tokens: [B, 2, L]
    (or both as ``batch.TextFeatures``: precomputed frozen features with their masks);
    drop_overall / drop_individual: [B] bool, replace that condition by the learned null one.

    Returns x0 [B, T, 2, D] and a dict of auxiliary outputs for the losses:
    ``part_distances`` [B, T, K, K] (person 1's part i to person 2's part j, metres),
    ``individual_motion`` / ``individual_text`` [B, 2, E], ``overall_motion`` /
    ``overall_text`` [B, E].
    """
    batch = x_t.shape[0]
    drop_overall = jnp.zeros((batch,), bool) if drop_overall is None else drop_overall
    drop_individual = jnp.zeros((batch,), bool) if drop_individual is None else drop_individual
    cond = TextConditioner(self.vocab_size, self.width, self.text_width, self.text_layers,
                           self.text_heads, self.max_text_len, self.dropout, name='text')(
                               text_tokens, person_tokens, drop_overall, drop_individual,
                               deterministic=deterministic)
    stream_mask = jnp.repeat(mask, 2, axis=0)
    time_cond = jnp.repeat(layers.TimestepEmbedding(self.width, name='time_embed')(t, x_t.dtype), 2, axis=0)
    h = blocks.MotionIn(self.width, name='motion_in')(blocks.to_streams(x_t))
    aux = {}

    # 1. Self-Learning stage: each person with its own text.
    individual_cond = time_cond + cond.person_pooled
    for i in range(self.individual_layers):
      h = blocks.block(self.num_heads, self.ff_dim, self.dropout, remat=self.remat,
                       name=f'individual_{i}')(
          h, stream_mask, individual_cond, cond.person_tokens, cond.person_mask,
          deterministic=deterministic)
    embed = dense.Dense(self.embed_dim, name='individual_motion_embed')
    aux['individual_motion'] = embed(blocks.masked_pool(h, stream_mask)).reshape(batch, 2, -1)
    aux['individual_text'] = dense.Dense(self.embed_dim, name='individual_text_embed')(
        cond.person_pooled).reshape(batch, 2, -1)

    # 2. Adaptive Adjustment stage.
    if self.use_graph:
      if self.use_distance_predictor:  # Its part tokens are the graph's nodes too.
        distances, parts = DistancePredictor(
            hidden=self.graph_hidden, num_parts=self.num_parts, name='distance')(h)
        aux['part_distances'] = distances.reshape(batch, 2, *distances.shape[1:])[:, 0]
      else:
        distances = None
        parts = dense.Dense(self.num_parts * self.graph_hidden, name='part_tokens')(h)
        parts = parts.reshape(*h.shape[:2], self.num_parts, self.graph_hidden)
      nodes = InteractionGraph(
          hidden=self.graph_hidden, num_parts=self.num_parts, rounds=self.graph_rounds,
          distance_threshold=self.distance_threshold, temperature=self.distance_temperature,
          gated=self.use_distance_predictor, message_passing=self.graph_message_passing,
          name='graph')(parts, distances)
      h = h + dense.Dense(self.width, name='graph_out')(nodes.reshape(*h.shape[:2], -1))
    overall_cond = time_cond + jnp.repeat(cond.overall_pooled, 2, axis=0)
    for i in range(self.interaction_layers):
      h = blocks.block(self.num_heads, self.ff_dim, self.dropout, remat=self.remat,
                       name=f'interaction_{i}')(
          h, stream_mask, overall_cond, blocks.partner(h), blocks.partner(stream_mask),
          deterministic=deterministic)

    # 3. Teacher-Guided Refinement stage: the overall caption.
    if self.use_refinement:
      overall_tok = jnp.repeat(cond.overall_tokens, 2, axis=0)
      overall_mask = jnp.repeat(cond.overall_mask, 2, axis=0)
      for i in range(self.refinement_layers):
        h = blocks.block(self.num_heads, self.ff_dim, self.dropout, remat=self.remat,
                         name=f'refinement_{i}')(
            h, stream_mask, overall_cond, overall_tok, overall_mask, deterministic=deterministic)
    # The dual-motion feature is symmetric in the persons: the mean of both streams' pools.
    pooled = blocks.masked_pool(h, stream_mask).reshape(batch, 2, -1).mean(axis=1)
    aux['overall_motion'] = dense.Dense(self.embed_dim, name='overall_motion_embed')(pooled)
    aux['overall_text'] = dense.Dense(self.embed_dim, name='overall_text_embed')(cond.overall_pooled)

    x0 = blocks.from_streams(blocks.MotionOut(self.feature_dim, name='head')(h))
    return x0, aux
