"""Schedule tables, the forward process, DDIM and guidance against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from finedual_jax.diffusion import losses
from finedual_jax.diffusion import sampler
from finedual_jax.diffusion.schedule import Schedule, cosine_alphas_cumprod, q_sample


def test_cosine_schedule_matches_closed_form():
  n, s = 1000, 0.008
  alpha_bar = cosine_alphas_cumprod(n)
  assert alpha_bar.dtype == np.float64 and alpha_bar.shape == (n,)
  f = lambda t: np.cos((t / n + s) / (1 + s) * np.pi / 2) ** 2
  # Away from the clipped end, alpha_bar_t = f(t + 1) / f(0).
  t = np.arange(900)
  np.testing.assert_allclose(alpha_bar[t], f(t + 1) / f(0), rtol=1e-10)
  assert np.all(np.diff(alpha_bar) < 0) and 0 < alpha_bar[-1] < 1e-4


def test_q_sample_uses_the_tables():
  schedule = Schedule.cosine(1000)
  x0 = jax.random.normal(jax.random.key(0), (3, 5, 2, 4))
  noise = jax.random.normal(jax.random.key(1), x0.shape)
  t = jnp.array([0, 500, 999])
  out = np.asarray(q_sample(schedule, x0, t, noise))
  ab = schedule.alphas_cumprod[np.asarray(t)][:, None, None, None]
  np.testing.assert_allclose(out, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise, rtol=1e-5, atol=1e-6)


def test_ddim_scan_equals_a_python_loop():
  schedule = Schedule.cosine(1000)
  predict = lambda x, t: jnp.tanh(x) * 0.5 + t[:, None].astype(x.dtype) * 1e-4
  noise = jax.random.normal(jax.random.key(2), (2, 7))
  got = np.asarray(sampler.ddim_sample(predict, schedule, noise, 12))
  steps = sampler.ddim_timesteps(1000, 12)
  x = np.asarray(noise, np.float64)
  for i, t in enumerate(steps):
    x0 = np.asarray(predict(jnp.asarray(x, jnp.float32), jnp.full((2,), t)), np.float64)
    ab = schedule.alphas_cumprod[t]
    ab_prev = schedule.alphas_cumprod[steps[i + 1]] if i + 1 < len(steps) else 1.0
    eps = (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
    x = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps
  np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-4)
  assert steps[0] == 999 and steps[-1] == 0 and len(set(steps)) == 12


def test_ddim_rejects_bad_step_counts():
  with pytest.raises(ValueError, match='ddim_steps'):
    sampler.ddim_timesteps(1000, 0)


def test_guidance_runs_branches_in_one_call_and_combines_them():
  calls = []

  def denoise(x, t, drop_overall, drop_individual):
    calls.append(x.shape[0])
    # Branch identity is visible in the output: 1 * overall kept + 10 * individual kept.
    return x * 0 + (~drop_overall)[:, None] * 1.0 + (~drop_individual)[:, None] * 10.0

  guided = sampler.guided_denoiser(denoise, w_overall=2.0, w_individual=3.0)
  out = guided(jnp.zeros((4, 3)), jnp.zeros((4,), jnp.int32))
  assert calls == [12]
  # u = 0, c_o = 1, c_i = 10 -> 0 + 2 * 1 + 3 * 10.
  np.testing.assert_allclose(np.asarray(out), 32.0)


def test_masked_losses_are_per_example_means():
  x0 = jnp.zeros((2, 4, 2, 262))
  pred = x0.at[0].set(1.0).at[1, 2:].set(100.0)  # Example 1's error sits on padding only.
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]], jnp.float32)
  weights = {'simple': 1.0, 'velocity': 30.0}
  terms = losses.training_losses(pred, x0, mask, jnp.array([0, 0]), jnp.zeros(262), jnp.ones(262),
                                 weights, 700)
  np.testing.assert_allclose(float(terms['simple']), 0.5)  # (1 + 0) / 2 examples.
  np.testing.assert_allclose(float(terms['total']),
                             float(terms['simple'] + 30.0 * terms['velocity']), rtol=1e-6)
  late = losses.training_losses(pred, x0, mask, jnp.array([900, 900]), jnp.zeros(262),
                                jnp.ones(262), weights, 700)
  assert float(late['velocity']) == 0.0
