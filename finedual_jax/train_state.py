"""The train state (step, params, EMA params, optimizer state, RNG, skipped updates) and the
optimizer."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes; a pytree, checkpointed whole.

  ``step`` counts batches consumed (so it also advances on a skipped update) and keys the
  step's randomness; ``skipped_steps`` counts updates discarded for a non-finite loss or
  gradient. With the input pipeline's state, this is all an exact resume needs.
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  skipped_steps: jax.Array = 0


def make_optimizer(*, learning_rate: float, warmup_steps: int, total_steps: int,
                   weight_decay: float, clip_norm: float, b1: float = 0.9,
                   b2: float = 0.999) -> optax.GradientTransformation:
  """AdamW with linear warm-up then cosine decay, after global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=0.1 * learning_rate)
  return optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))


def create(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params), rng=rng,
                    skipped_steps=jnp.zeros((), jnp.int32))


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay with warm-up, ``min(decay, (1 + step) / (10 + step))``.

  Without the warm-up a short run's average is dominated by the initial weights (0.999**800
  = 0.45), whose zero-initialised head predicts nothing.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema: Any, params: Any, decay: jax.Array) -> Any:
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
