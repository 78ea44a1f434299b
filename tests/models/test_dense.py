"""Dense layers as 2-D products (finedual_jax/models/dense.py): the same parameters, outputs
and gradients as flax's layers, and the 2-D weight-gradient product they exist for."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from finedual_jax.models import dense
from finedual_jax.models.factory import build_model


def _x(shape=(3, 7, 16), dtype=jnp.float32):
  return jax.random.normal(jax.random.key(1), shape, dtype)


def _assert_same_as_flax(ours, theirs, x, *, rtol=1e-5, atol=1e-5):
  params = theirs.init(jax.random.key(0), x)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x))
          == jax.tree.map(jnp.shape, params))
  # A non-linear loss, so the output gradient differs from row to row.
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)) * x.mean())
  np.testing.assert_array_equal(np.asarray(ours.apply(params, x)),
                                np.asarray(theirs.apply(params, x)))
  want = jax.grad(loss(theirs), argnums=(0, 1))(params, x)
  got = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                               rtol=rtol, atol=atol)


@pytest.mark.parametrize('shape', [(5, 16), (3, 7, 16), (2, 3, 4, 16)])
def test_dense_equals_flax_dense_forward_and_backward(shape):
  _assert_same_as_flax(dense.Dense(8), nn.Dense(8), _x(shape))


def test_attention_projections_equal_flax_attention():
  # query/key/value contract one axis into [heads, head_dim]; the output projection two.
  _assert_same_as_flax(dense.MultiHeadAttention(4), nn.MultiHeadDotProductAttention(4), _x())


def test_bfloat16_layers_keep_their_dtypes():
  _assert_same_as_flax(dense.Dense(8, dtype=jnp.bfloat16), nn.Dense(8, dtype=jnp.bfloat16),
                       _x(), rtol=2e-2, atol=2e-2)


def test_weight_gradient_is_a_two_dimensional_product():
  x, w = _x(), jax.random.normal(jax.random.key(2), (16, 8))
  dims = (((2,), (0,)), ((), ()))

  def products(dot):
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(jnp.sin(dot(x, w, dims))),
                                    argnums=(0, 1)))(x, w)
    return [eqn for eqn in jaxpr.eqns if eqn.primitive.name == 'dot_general']

  ours, plain = products(dense.dot_general), products(jax.lax.dot_general)
  assert len(ours) == len(plain) == 3  # Forward, input gradient, weight gradient.
  assert all(v.aval.ndim == 2 for eqn in ours for v in eqn.invars)
  # Plain autodiff contracts both leading axes of [3, 7, ...] for the weight gradient.
  assert any(len(eqn.params['dimension_numbers'][0][0]) == 2 for eqn in plain)


@pytest.mark.parametrize('dims, lhs_shape, rhs_shape', [
    ((((1,), (1,)), ((), ())), (7, 16), (8, 16)),          # The kernel's last axis.
    ((((2,), (1,)), ((0,), (0,))), (3, 7, 16), (3, 16, 8)),  # Batch axes.
])
def test_other_contractions_are_plain_dot_general(dims, lhs_shape, rhs_shape):
  lhs, rhs = _x(lhs_shape), jax.random.normal(jax.random.key(2), rhs_shape)
  np.testing.assert_array_equal(np.asarray(dense.dot_general(lhs, rhs, dims)),
                                np.asarray(jax.lax.dot_general(lhs, rhs, dims)))


def test_replicated_kernel_gradient_under_shard_map_equals_plain_autodiff():
  # The training step's setting: rows split over a mesh axis, the kernel replicated.
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = jax.make_mesh((len(jax.devices()),), ('data',))
  x = jax.device_put(_x((2 * len(jax.devices()), 5, 16)), NamedSharding(mesh, P('data')))
  w = jax.device_put(jax.random.normal(jax.random.key(2), (16, 8)), NamedSharding(mesh, P()))
  dims = (((2,), (0,)), ((), ()))

  def grads(dot):
    def per_device(x, w):
      g = jax.grad(lambda w: jnp.sum(jnp.sin(dot(x, w, dims)) * 3.0))(w)
      return jax.lax.psum(g, 'data')
    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P('data'), P()),
                                 out_specs=P()))(x, w)

  np.testing.assert_allclose(np.asarray(grads(dense.dot_general)),
                             np.asarray(grads(jax.lax.dot_general)), rtol=1e-5, atol=1e-5)


def test_denoiser_uses_them_and_keeps_its_parameter_names():
  model = build_model(_tiny_model_config(), vocab_size=50, max_text_len=8, feature_dim=262)
  batch, frames = 2, 6
  args = (jnp.zeros((batch, frames, 2, 262)), jnp.zeros((batch,), jnp.int32),
          jnp.ones((batch, frames)), jnp.ones((batch, 8), jnp.int32),
          jnp.ones((batch, 2, 8), jnp.int32))
  params = jax.eval_shape(model.init, jax.random.key(0), *args)['params']
  names = {'/'.join(str(k.key) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  # flax's auto-names and attention sub-modules, as checkpoints written before hold them.
  assert 'individual_0/ffn/Dense_0/kernel' in names
  assert 'individual_0/self_attn/query/kernel' in names
  assert 'individual_0/self_attn/out/kernel' in names
  # No product without batch axes takes the motion streams' [2B, T, ...] activations whole.
  jaxpr = jax.make_jaxpr(lambda p: model.apply({'params': p}, *args)[0])(
      jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params))
  products = [eqn for eqn in _equations(jaxpr.jaxpr) if eqn.primitive.name == 'dot_general'
              and eqn.params['dimension_numbers'][1] == ((), ())]
  assert len(products) > 20
  assert not [eqn for eqn in products if eqn.invars[0].aval.shape[:2] == (2 * batch, frames)]


def _equations(jaxpr):
  """Every equation of ``jaxpr`` and of the jaxprs nested in its equations' parameters."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, 'jaxpr', sub)  # A ClosedJaxpr's Jaxpr.
        if hasattr(sub, 'eqns'):
          yield from _equations(sub)


def _tiny_model_config():
  from experiments import finedual
  return finedual.get_config('size=tiny').model
