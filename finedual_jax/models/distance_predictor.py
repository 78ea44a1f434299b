"""FineDual's interaction distance predictor: per-frame part-to-part distances of the two persons.

A regression head on the Self-Learning stage's per-person features (DESIGN §2.3). Its target is
``motion.body_parts.part_distances`` of the clean motion; its prediction gates the interaction
graph's inter-person edges. The part tokens it builds are returned too: the interaction graph
uses them as its nodes, so the distance regression and the graph share one part embedding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from finedual_jax.models import dense
from finedual_jax.motion import body_parts


class DistancePredictor(nn.Module):
  """Predicts the K x K minimum part-to-part distances between each stream and its partner.

  Streams are stacked on the batch axis as (b0p0, b0p1, b1p0, ...), like the denoiser's.
  The pairwise head is computed once per pair, from person 0's side, and person 1's matrix is
  its transpose; so stream s at (i, j) equals its partner at (j, i) exactly, by construction.
  The head sees the two part tokens only through the symmetric combination (u + v, u * v),
  so swapping the persons swaps the predictions: no weight knows who is person 0.
  """
  hidden: int
  num_parts: int = body_parts.NUM_PARTS

  @nn.compact
  def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """h: [2B, T, d] stage-1 features of the stacked streams.

    Returns (distances [2B, T, K, K] in metres, >= 0; part_tokens [2B, T, K, hidden]).
    distances[s, t, i, j] is the predicted minimum distance between part i of stream s and
    part j of its partner at frame t.
    """
    streams, frames = h.shape[:2]
    if streams % 2:
      raise ValueError(f'DistancePredictor: h must stack 2 streams per pair on axis 0 '
                       f'([2B, T, d]); got {streams} streams. Stack persons as '
                       f'(b0p0, b0p1, b1p0, ...).')
    k = self.num_parts
    tokens = dense.Dense(k * self.hidden, name='part_tokens')(nn.LayerNorm(name='ln_in')(h))
    tokens = tokens.reshape(streams, frames, k, self.hidden)

    pairs = tokens.reshape(streams // 2, 2, frames, k, self.hidden)
    u = pairs[:, 0, :, :, None, :]  # person 0's part i  [B, T, K, 1, H]
    v = pairs[:, 1, :, None, :, :]  # person 1's part j  [B, T, 1, K, H]
    symmetric = jnp.concatenate(jnp.broadcast_arrays(u + v, u * v), axis=-1)  # [B, T, K, K, 2H]
    x = nn.gelu(dense.Dense(self.hidden, name='pair_hidden')(symmetric))
    # softplus: distances are non-negative.
    d0 = nn.softplus(dense.Dense(1, name='pair_out')(x)[..., 0])  # [B, T, K, K]
    d1 = jnp.swapaxes(d0, -1, -2)
    distances = jnp.stack([d0, d1], axis=1).reshape(streams, frames, k, k)
    return distances, tokens
