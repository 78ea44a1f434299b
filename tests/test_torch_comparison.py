"""The JAX/PyTorch comparison of the denoisers' blocks (finedual_jax/torch_comparison.py).

PyTorch is optional: without it the command must say so; with it (pip install torch, the CPU
wheel) both networks must be the same training step, so that their times compare."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from finedual_jax import torch_comparison as tc
from finedual_jax.models import layers

SHAPES = dict(streams=4, length=9, width=16, heads=4, ff_dim=24, layers=2)


def test_without_pytorch_the_command_says_how_to_get_it(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError.
  with pytest.raises(RuntimeError, match='needs PyTorch: pip install torch'):
    tc.compare(**SHAPES, steps=1)


def test_bad_shapes_are_named_before_anything_runs():
  with pytest.raises(ValueError, match='--width 16 is not a multiple of --heads 3'):
    tc.compare(**dict(SHAPES, heads=3), steps=1)
  with pytest.raises(ValueError, match='--streams must be even'):
    tc.compare(**dict(SHAPES, streams=3), steps=1)


def test_inputs_pair_the_streams():
  data = tc.inputs(6, 10, 8)
  assert data['x'].shape == data['target'].shape == (6, 10, 8) and data['cond'].shape == (6, 8)
  lengths = data['mask'].sum(1)
  assert np.array_equal(lengths[0::2], lengths[1::2]) and lengths.min() >= 5
  assert np.array_equal(data['mask'], np.arange(10)[None] < lengths[:, None])


@pytest.fixture
def torch():
  return pytest.importorskip('torch', reason='the comparison itself needs PyTorch (pip install '
                             'torch); the rest of this file runs without it')


def test_both_networks_take_the_same_training_step(torch):
  data = tc.inputs(SHAPES['streams'], SHAPES['length'], SHAPES['width'], seed=2)
  model = tc.jax_stack(SHAPES['layers'], SHAPES['heads'], SHAPES['ff_dim'])
  x, mask, cond, target = (jnp.asarray(data[k]) for k in ('x', 'mask', 'cond', 'target'))
  params = model.init(jax.random.key(0), x, mask, cond)['params']
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape),
                        params)
  loss_fn = lambda p: tc.masked_mse(model.apply({'params': p}, x, mask, cond), target, mask)
  loss, grads = jax.value_and_grad(loss_fn)(params)
  tx = optax.adam(1e-2)
  updates, _ = tx.update(grads, tx.init(params), params)
  want = optax.apply_updates(params, updates)

  torch_model = tc.torch_stack(jax.device_get(params), SHAPES['heads'])
  optimizer = torch.optim.Adam(torch_model.parameters(), lr=1e-2)
  t = {k: torch.from_numpy(np.asarray(v)) for k, v in data.items()}
  torch_loss = tc.masked_mse(torch_model(t['x'], t['mask'], t['cond']), t['target'], t['mask'])
  torch_loss.backward()
  optimizer.step()
  assert float(torch_loss.detach()) == pytest.approx(float(loss), rel=1e-5)
  # The JAX gradients and updated parameters, in PyTorch's layout (a Linear holds its kernel
  # transposed): the gradients agree to float32 rounding; the first Adam update is about
  # lr * sign(gradient), so where a gradient is near zero it moves by up to 1% of lr, and the
  # key projections' biases, whose gradients are zero but for rounding (softmax ignores a
  # score added to a whole row), move by rounding's sign: their updates are not compared.
  as_torch = lambda tree: dict(tc.torch_stack(tree, SHAPES['heads']).named_parameters())
  grads_t, want_t = as_torch(grads), as_torch(want)
  compared = 0
  for name, p in torch_model.named_parameters():
    np.testing.assert_allclose(p.grad.numpy(), grads_t[name].detach().numpy(), rtol=1e-4,
                               atol=1e-6, err_msg=name)
    if not name.endswith('key.bias'):
      np.testing.assert_allclose(p.detach().numpy(), want_t[name].detach().numpy(), atol=1e-4,
                                 err_msg=name)
      compared += 1
  assert compared == len(grads_t) - 2 * SHAPES['layers']  # All but the self and cross key biases.


@pytest.mark.parametrize('mode', tc.MODES)
def test_the_command_writes_both_timings(torch, mode):
  result = tc.compare(**SHAPES, steps=2, mode=mode, log=lambda message: None)
  assert result['mode'] == mode and result['output_difference'] < 1e-5
  assert result['machine']['host_allocator'] in ('glibc', 'jemalloc')  # What the run used.
  assert result['flops_per_step'] > 0 and result['peak']['peak_flops_per_s'] > 0
  for name in ('jax', 'torch'):
    assert len(result[name]['step_seconds']) == 2 and result[name]['median_step_seconds'] > 0
    assert result[name]['mfu'] == pytest.approx(
        result['flops_per_step'] / result[name]['median_step_seconds']
        / result['peak']['peak_flops_per_s'])
  text = tc.format_result(result)
  step = {'train': 'training step', 'sample': 'forward pass'}[mode]
  assert f'JAX / PyTorch time per {step}' in text and 'PyTorch' in text
  json.dumps(result)  # The JSON the command writes.


def test_sample_mode_counts_a_forward_pass_with_its_attention(torch):
  """A forward pass without gradients: XLA's count of the network with textbook attention
  (the fused CPU kernel's products are invisible to the cost analysis and the chunked
  attention's loop counts once, so a count of the program that runs would leave the attention
  out), about a third of a training step's."""
  shapes = dict(SHAPES, width=32, heads=2)  # 16-wide heads: the kernel's, where it is built.
  flops = {mode: tc.compare(**shapes, steps=1, mode=mode, log=lambda message: None)[
      'flops_per_step'] for mode in tc.MODES}
  data = tc.inputs(shapes['streams'], shapes['length'], shapes['width'])
  model = tc.jax_stack(shapes['layers'], shapes['heads'], shapes['ff_dim'])
  x, mask, cond = (jnp.asarray(data[k]) for k in ('x', 'mask', 'cond'))
  params = model.init(jax.random.key(0), x, mask, cond)['params']

  def count(implementation):
    with layers.attention_implementation(implementation):
      cost = jax.jit(lambda p: model.apply({'params': p}, x, mask, cond)).lower(
          params).cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)['flops']

  assert count('auto') < count('xla')  # What runs counts less, so the check below can fail.
  assert flops['sample'] == pytest.approx(count('xla'))
  assert 0.2 < flops['sample'] / flops['train'] < 0.45


def test_an_unknown_mode_is_named():
  with pytest.raises(ValueError, match="--mode: expected one of train, sample, found 'infer'"):
    tc.compare(**SHAPES, steps=1, mode='infer')
