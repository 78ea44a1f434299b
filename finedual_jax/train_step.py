"""The per-device training and validation steps: pure functions, compiled once.

Written in the pmap model: each device sees its slice of the batch, randomness is keyed on the
global example index (so it depends neither on the device count nor on how the batch is split
into accumulation micro-batches), and gradients and metrics are averaged over
``parallel.DATA_AXIS``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from finedual_jax import parallel
from finedual_jax import train_state as train_state_lib
from finedual_jax.data import batch as batch_lib
from finedual_jax.diffusion import losses as losses_lib
from finedual_jax.diffusion.schedule import Schedule, q_sample
from finedual_jax.models import precision
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


def _draws(keys: jax.Array, shape: tuple[int, ...], dtype, num_steps: int):
  """Per-example keys [B] -> (timesteps [B], noise [B, *shape], uniforms [B]) for the loss."""
  t = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 0), (), 0, num_steps))(keys)
  noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), shape, dtype))(keys)
  u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 2)))(keys)
  return t, noise, u


def _make_loss(model: nn.Module, schedule: Schedule, *, mean: jax.Array, std: jax.Array,
               loss_weights: Mapping[str, float], geometric_max_t: int,
               nce_temperature: float, compute_dtype: Any = jnp.float32) -> Callable:
  """``loss(params, batch, t, noise, drop_overall, drop_individual, deterministic, rngs)
  -> (total, terms)`` on one device's examples.

  The denoiser runs in ``compute_dtype`` (``models/precision.py``: float32 parameters cast for
  the forward pass, outputs back in float32); the noising and every loss term stay float32.
  """
  weights = dict(loss_weights)

  def loss(params, batch, t, noise, drop_overall, drop_individual, deterministic, rngs):
    x0 = batch[batch_lib.MOTION]
    x_t = q_sample(schedule, x0, t, noise) * batch[batch_lib.MASK][:, :, None, None]
    pred, aux = precision.apply(model, params, x_t, t, batch[batch_lib.MASK],
                                *batch_lib.text_inputs(batch), drop_overall, drop_individual,
                                dtype=compute_dtype, deterministic=deterministic, rngs=rngs)
    with jax.named_scope('losses'):  # A name for profiles (finedual_jax/profiling.py).
      extra = auxiliary_losses(aux, x0, batch[batch_lib.MASK], drop_overall, drop_individual,
                               mean, std, weights, nce_temperature)
      # Weighted terms the model cannot produce (a baseline has no aux) are left out.
      usable = {k: v for k, v in weights.items() if k in losses_lib.MOTION_TERMS or k in extra}
      terms = losses_lib.training_losses(pred, x0, batch[batch_lib.MASK], t, mean, std, usable,
                                         geometric_max_t, extra)
    return terms['total'], terms

  return loss


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: Schedule, *,
                    mean: jax.Array, std: jax.Array, cond_drop_p: float,
                    loss_weights: Mapping[str, float], geometric_max_t: int,
                    nce_temperature: float, ema_decay: float,
                    grad_accum_steps: int = 1, compute_dtype: Any = jnp.float32) -> Callable:
  """Returns ``step(state, batch) -> (state, metrics)`` to run per device.

  ``loss_weights`` name every term (``losses.INTERGEN_WEIGHTS`` plus FineDual's
  ``distance_regression``, ``individual_nce`` and ``overall_nce``); 0 switches one off.

  With ``grad_accum_steps`` = k, each device's rows are k micro-batches run one after the
  other (``lax.scan``) and their mean gradient makes one optimizer update, which equals the
  update of the whole batch at once: every term is a mean of per-example values and every draw
  is keyed on the global example index. The exception is InfoNCE, whose negatives are the
  micro-batch's (over all devices), not the whole batch's.

  A step whose loss or gradient is not finite changes nothing but ``step`` and
  ``skipped_steps`` (decided on the device, without a host round trip); its metrics report
  ``update_skipped`` = 1 so the loop can apply ``train.nan_policy``.

  ``compute_dtype`` = bfloat16 is mixed precision: parameters, gradients, optimizer state and
  EMA stay float32; only the denoiser's forward and backward pass run in bfloat16.
  """
  loss = _make_loss(model, schedule, mean=mean, std=std, loss_weights=loss_weights,
                    geometric_max_t=geometric_max_t, nce_temperature=nce_temperature,
                    compute_dtype=compute_dtype)

  def grads_and_terms(params, batch, indices, example_rng, dropout_rng):
    x0 = batch[batch_lib.MOTION]
    keys = jax.vmap(lambda i: jax.random.fold_in(example_rng, i))(indices)
    t, noise, u = _draws(keys, x0.shape[1:], x0.dtype, schedule.num_steps)
    drop_overall, drop_individual = condition_dropout(u, cond_drop_p)
    grads, terms = jax.grad(
        lambda p: loss(p, batch, t, noise, drop_overall, drop_individual, False,
                       {'dropout': dropout_rng}), has_aux=True)(params)
    return grads, terms

  def step(state: train_state_lib.TrainState, batch: dict[str, jax.Array]):
    local = batch[batch_lib.MOTION].shape[0]
    indices = parallel.example_indices(local)
    rng = jax.random.fold_in(state.rng, state.step)
    example_rng, dropout_rng = jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)
    # Dropout masks are drawn per device (and micro-batch): with dropout > 0, runs match across
    # device counts only in distribution; everything else is keyed on the global example index.
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(parallel.DATA_AXIS))
    if grad_accum_steps == 1:
      grads, terms = grads_and_terms(state.params, batch, indices, example_rng, dropout_rng)
    else:
      micro = local // grad_accum_steps
      split = lambda x: x.reshape(grad_accum_steps, micro, *x.shape[1:])

      def accumulate(carry, xs):
        micro_batch, micro_indices, index = xs
        out = grads_and_terms(state.params, micro_batch, micro_indices, example_rng,
                              jax.random.fold_in(dropout_rng, index))
        return jax.tree.map(jnp.add, carry, out), None

      # The sums differ per device until the pmean below: the carry is device-varying.
      zeros = jax.tree.map(
          lambda s: jax.lax.pcast(jnp.zeros(s.shape, s.dtype), parallel.DATA_AXIS, to='varying'),
          jax.eval_shape(grads_and_terms, state.params, jax.tree.map(lambda x: x[:micro], batch),
                         indices[:micro], example_rng, dropout_rng))
      (grads, terms), _ = jax.lax.scan(
          accumulate, zeros, (jax.tree.map(split, batch), split(indices),
                              jnp.arange(grad_accum_steps)))
      grads, terms = jax.tree.map(lambda x: x / grad_accum_steps, (grads, terms))
    grads = jax.lax.pmean(grads, parallel.DATA_AXIS)
    terms = jax.lax.pmean(terms, parallel.DATA_AXIS)
    with jax.named_scope('optimizer'):  # A name for profiles (finedual_jax/profiling.py).
      grad_norm = optax.tree.norm(grads)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      ema_params = train_state_lib.ema_update(
          state.ema_params, params, train_state_lib.ema_decay_at(state.step, ema_decay))
      # The values are averaged over devices, so every device makes the same choice.
      finite = jnp.isfinite(terms['total']) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      new_state = state.replace(
          step=state.step + 1, params=keep(params, state.params),
          opt_state=keep(opt_state, state.opt_state),
          ema_params=keep(ema_params, state.ema_params),
          skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
    metrics = dict(terms, grad_norm=grad_norm, update_skipped=(~finite).astype(jnp.int32),
                   skipped_steps=new_state.skipped_steps)
    return new_state, metrics

  return step


EVAL_INDEX = 'eval_index'
"""Batch key of validation batches: each row's index in the validation set, [B] int32."""


def make_eval_step(model: nn.Module, schedule: Schedule, *, mean: jax.Array, std: jax.Array,
                   loss_weights: Mapping[str, float], geometric_max_t: int,
                   nce_temperature: float, seed: int,
                   compute_dtype: Any = jnp.float32) -> Callable:
  """Returns ``evaluate(params, batch) -> terms`` to run per device: the training loss on
  validation data, with no dropout and no condition dropout, its timesteps and noise keyed
  on ``seed`` and each row's ``EVAL_INDEX``, so every evaluation sees the same draws."""
  loss = _make_loss(model, schedule, mean=mean, std=std, loss_weights=loss_weights,
                    geometric_max_t=geometric_max_t, nce_temperature=nce_temperature,
                    compute_dtype=compute_dtype)

  def evaluate(params, batch):
    batch = dict(batch)
    indices = batch.pop(EVAL_INDEX)
    x0 = batch[batch_lib.MOTION]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(indices)
    t, noise, _ = _draws(keys, x0.shape[1:], x0.dtype, schedule.num_steps)
    keep = jnp.zeros(t.shape, bool)
    _, terms = loss(params, batch, t, noise, keep, keep, True, None)
    return jax.lax.pmean(terms, parallel.DATA_AXIS)

  return evaluate
