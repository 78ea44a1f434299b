"""The per-device training step: a pure function of (state, batch), compiled once.

Written in the pmap model: each device sees its slice of the batch, randomness is keyed on the
global example index (so it does not depend on the device count), and gradients and metrics are
averaged over ``parallel.DATA_AXIS``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from finedual_jax import parallel
from finedual_jax import train_state as train_state_lib
from finedual_jax.data import batch as batch_lib
from finedual_jax.diffusion import losses as losses_lib
from finedual_jax.diffusion.schedule import Schedule, q_sample
from finedual_jax.motion import body_parts


def condition_dropout(u: jax.Array, p: float) -> tuple[jax.Array, jax.Array]:
  """[B] uniforms -> (drop_overall, drop_individual): each alone with p, both together with p."""
  both = u < p
  return both | ((u >= p) & (u < 2 * p)), both | ((u >= 2 * p) & (u < 3 * p))


def auxiliary_losses(aux: Mapping[str, jax.Array], x0: jax.Array, mask: jax.Array,
                     drop_overall: jax.Array, drop_individual: jax.Array, mean: jax.Array,
                     std: jax.Array, weights: Mapping[str, float],
                     nce_temperature: float) -> dict[str, jax.Array]:
  """FineDual's terms from the model's auxiliary outputs (those with a non-zero weight).

  The distance target is computed from the clean motion; the contrastive terms use the whole
  global batch as negatives and leave out examples whose text was dropped for guidance.
  """
  terms = {}
  if weights.get('distance_regression', 0.0) and 'part_distances' in aux:
    positions = losses_lib.joint_positions(x0 * std + mean)  # [B, T, 2, 22, 3]
    target = body_parts.part_distances(positions[:, :, 0], positions[:, :, 1])
    terms['distance_regression'] = losses_lib.distance_regression(aux['part_distances'], target,
                                                                  mask)
  if weights.get('individual_nce', 0.0) and 'individual_motion' in aux:
    embed_dim = aux['individual_motion'].shape[-1]
    terms['individual_nce'] = losses_lib.info_nce(
        aux['individual_motion'].reshape(-1, embed_dim),
        aux['individual_text'].reshape(-1, embed_dim), nce_temperature,
        valid=~jnp.repeat(drop_individual, 2), axis_name=parallel.DATA_AXIS)
  if weights.get('overall_nce', 0.0) and 'overall_motion' in aux:
    terms['overall_nce'] = losses_lib.info_nce(
        aux['overall_motion'], aux['overall_text'], nce_temperature, valid=~drop_overall,
        axis_name=parallel.DATA_AXIS)
  return terms


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: Schedule, *,
                    mean: jax.Array, std: jax.Array, cond_drop_p: float,
                    loss_weights: Mapping[str, float], geometric_max_t: int,
                    nce_temperature: float, ema_decay: float) -> Callable:
  """Returns ``step(state, batch) -> (state, metrics)`` to run per device.

  ``loss_weights`` name every term (``losses.INTERGEN_WEIGHTS`` plus FineDual's
  ``distance_regression``, ``individual_nce`` and ``overall_nce``); 0 switches one off.
  """
  weights = dict(loss_weights)

  def step(state: train_state_lib.TrainState, batch: dict[str, jax.Array]):
    x0 = batch[batch_lib.MOTION]
    local = x0.shape[0]
    rng = jax.random.fold_in(state.rng, state.step)
    example_rng, dropout_rng = jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)
    keys = jax.vmap(lambda i: jax.random.fold_in(example_rng, i))(parallel.example_indices(local))
    t = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 0), (), 0,
                                              schedule.num_steps))(keys)
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), x0.shape[1:],
                                                 x0.dtype))(keys)
    u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 2)))(keys)
    drop_overall, drop_individual = condition_dropout(u, cond_drop_p)
    # Dropout masks are drawn per device: with dropout > 0, runs match across device counts
    # only in distribution; everything else is keyed on the global example index.
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(parallel.DATA_AXIS))
    x_t = q_sample(schedule, x0, t, noise) * batch[batch_lib.MASK][:, :, None, None]

    def loss_fn(params):
      pred, aux = model.apply({'params': params}, x_t, t, batch[batch_lib.MASK],
                              *batch_lib.text_inputs(batch), drop_overall, drop_individual, deterministic=False,
                              rngs={'dropout': dropout_rng})
      extra = auxiliary_losses(aux, x0, batch[batch_lib.MASK], drop_overall, drop_individual,
                               mean, std, weights, nce_temperature)
      # Weighted terms the model cannot produce (a baseline has no aux) are left out.
      usable = {k: v for k, v in weights.items() if k in losses_lib.MOTION_TERMS or k in extra}
      terms = losses_lib.training_losses(pred, x0, batch[batch_lib.MASK], t, mean, std, usable,
                                         geometric_max_t, extra)
      return terms['total'], terms

    grads, terms = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, parallel.DATA_AXIS)
    terms = jax.lax.pmean(terms, parallel.DATA_AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        ema_params=train_state_lib.ema_update(
            state.ema_params, params, train_state_lib.ema_decay_at(state.step, ema_decay)))
    metrics = dict(terms, grad_norm=optax.tree.norm(grads))
    return new_state, metrics

  return step
