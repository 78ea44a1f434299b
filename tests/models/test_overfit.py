"""FineDual, both baselines and every ablation can fit one small batch: the loss (all terms
their config enables, FineDual's auxiliary ones included) falls at least 10x."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import baseline_common
from experiments import finedual
from finedual_jax import trainer
from finedual_jax import train_step
from finedual_jax.diffusion import losses
from finedual_jax.diffusion.schedule import Schedule, q_sample
from finedual_jax.models import factory

# The total loss falls 10x within 50-67 steps for every config here (measured; 20x by 150).
B, T, V, STEPS = 4, 12, 40, 100
CONFIGS = {
    'finedual': lambda: finedual.get_config('size=tiny'),
    'intergen': lambda: baseline_common.baseline_config('intergen', 'size=tiny'),
    'in2in': lambda: baseline_common.baseline_config('in2in', 'size=tiny'),
    **{a: (lambda a=a: finedual.get_config(f'size=tiny,ablation={a}'))
       for a in ('no_alignment', 'no_distance', 'no_graph', 'no_refinement')},
}


def _batch(max_text_len):
  rng = np.random.default_rng(0)
  # A smooth motion (random walk) so that velocities and contacts are meaningful.
  x0 = np.cumsum(rng.normal(size=(B, T, 2, 262)) * 0.1, axis=1).astype(np.float32)
  mask = np.ones((B, T), np.float32)
  mask[1, 9:] = 0.0
  text = rng.integers(4, V, size=(B, max_text_len)).astype(np.int32)
  persons = rng.integers(4, V, size=(B, 2, max_text_len)).astype(np.int32)
  return jnp.asarray(x0 * mask[..., None, None]), jnp.asarray(mask), text, persons


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_overfits_one_batch(name):
  config = CONFIGS[name]()
  model = factory.build_model(config.model, vocab_size=V, max_text_len=config.data.max_text_len)
  x0, mask, text, persons = _batch(config.data.max_text_len)
  t = jnp.array([5, 50, 300, 650])  # All below geometric_max_t: every term is active.
  noise = jax.random.normal(jax.random.key(1), x0.shape)
  x_t = q_sample(Schedule.cosine(1000), x0, t, noise) * mask[:, :, None, None]
  drop = jnp.zeros((B,), bool)
  weights = trainer.loss_weights(config)
  mean, std = jnp.zeros(262), jnp.ones(262)
  params = model.init(jax.random.key(0), x_t, t, mask, text, persons)['params']
  mesh = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))

  def loss_fn(params):
    pred, aux = model.apply({'params': params}, x_t, t, mask, text, persons, drop, drop)
    extra = train_step.auxiliary_losses(aux, x0, mask, drop, drop, mean, std, weights,
                                        config.losses.nce_temperature)
    usable = {k: v for k, v in weights.items() if k in losses.MOTION_TERMS or k in extra}
    terms = losses.training_losses(pred, x0, mask, t, mean, std, usable,
                                   config.losses.geometric_max_t, extra)
    return terms['total'], terms

  tx = optax.adam(3e-3)

  @jax.jit
  def update(params, opt_state):
    # auxiliary_losses gathers over the data axis, as in training: run it on a 1-device mesh.
    def grad_fn(p):
      return jax.lax.pmean(jax.grad(loss_fn, has_aux=True)(p), 'data')

    grads, terms = jax.shard_map(grad_fn, mesh=mesh,
                                 in_specs=jax.sharding.PartitionSpec(),
                                 out_specs=jax.sharding.PartitionSpec())(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, terms

  opt_state = tx.init(params)
  first = None
  for _ in range(STEPS):
    params, opt_state, terms = update(params, opt_state)
    first = first or {k: float(v) for k, v in terms.items()}
  last = {k: float(v) for k, v in terms.items()}
  expected = {'distance_regression', 'individual_nce', 'overall_nce'} & {
      k for k, v in weights.items() if v}
  if config.model.name != 'finedual':
    expected = set()
  elif not config.model.use_distance_predictor or not config.model.use_graph:
    expected -= {'distance_regression'}
  assert expected <= set(last), (name, sorted(last))
  assert last['total'] < first['total'] / 10, (name, first, last)
