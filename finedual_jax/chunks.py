"""Running a per-example function over a batch a few examples at a time (``lax.map``).

The denoisers treat every example on its own, so their batch can be cut into chunks that run
one after another inside the same compiled program. On a CPU the sampler is faster that way:
one chunk's activations stay in the caches, a whole batch's do not
(``generation.sample_chunk_size``). The training step does not use it: cutting only the
denoiser's passes into chunks of 4 made the FineDual ``bench`` step slower on the 2-core Zen 4
(14.6 against 13.7 s), because a chunk's backward pass runs long after its forward pass.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def map_in_chunks(fn: Callable[..., Any], chunk: int, *args: Any) -> Any:
  """``fn(index, *chunk_args)`` for consecutive chunks of ``chunk`` examples, outputs joined.

  ``args`` are pytrees whose leaves share a leading batch axis; the last chunk is padded by
  repeating the last example (a valid input whose outputs are dropped). ``index`` is the
  chunk's number, an int32 scalar (e.g. for folding into a random key). ``chunk`` 0, or one
  at least the batch, calls ``fn(0, *args)`` once. Gradients flow through the loop.
  """
  if chunk < 0:
    raise ValueError(f'map_in_chunks: chunk must be >= 0 (0: the whole batch), found {chunk}.')
  batch = jax.tree.leaves(args)[0].shape[0]
  if not chunk or batch <= chunk:
    return fn(jnp.int32(0), *args)
  pad = -batch % chunk

  def split(a):
    if pad:
      a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
    return a.reshape((-1, chunk) + a.shape[1:])

  chunks = jax.tree.map(split, args)
  indices = jnp.arange(jax.tree.leaves(chunks)[0].shape[0], dtype=jnp.int32)
  out = jax.lax.map(lambda xs: fn(xs[0], *xs[1]), (indices, chunks))
  return jax.tree.map(lambda o: o.reshape((-1,) + o.shape[2:])[:batch], out)
