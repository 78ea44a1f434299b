"""The optimizer schedule and the EMA of the weights."""

import jax.numpy as jnp
import numpy as np

from finedual_jax import train_state


def test_ema_decay_warms_up_then_caps():
  decays = [float(train_state.ema_decay_at(s, 0.999)) for s in (0, 10, 20000, 100000)]
  np.testing.assert_allclose(decays[:2], [0.1, 11 / 20], rtol=1e-6)
  assert decays[2] == decays[3] == np.float32(0.999)


def test_short_runs_ema_tracks_the_weights_not_the_initialisation():
  def run(decay_at):
    ema = jnp.zeros(())
    for step in range(800):  # The weights move steadily away from their initial value 0.
      ema = train_state.ema_update(ema, jnp.float32(step + 1), decay_at(step))
    return float(ema)

  warm = run(lambda step: train_state.ema_decay_at(step, 0.999))
  fixed = run(lambda step: jnp.float32(0.999))
  reference = 0.0
  for step in range(800):
    decay = min(0.999, (1 + step) / (10 + step))
    reference = decay * reference + (1 - decay) * (step + 1)
  np.testing.assert_allclose(warm, reference, rtol=1e-4)
  assert warm > fixed + 100  # Fixed decay still weighs the initial weights by 0.999**800 = 0.45.


def test_learning_rate_warms_up_and_decays():
  tx = train_state.make_optimizer(learning_rate=1.0, warmup_steps=10, total_steps=100,
                                  weight_decay=0.0, clip_norm=1e9)
  params = {'w': jnp.zeros(())}
  state = tx.init(params)
  lrs = []
  for _ in range(100):
    updates, state = tx.update({'w': jnp.ones(())}, state, params)
    lrs.append(-float(updates['w']))  # Adam's first steps move by about the learning rate.
  assert lrs[0] < lrs[5] < lrs[9] and lrs[-1] < lrs[20]
