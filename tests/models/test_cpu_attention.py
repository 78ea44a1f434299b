"""The fused CPU attention kernel: the chunked attention's function and gradients for every
mask layout, row count and head size its loops treat differently; dropout against a textbook
attention with the same keep-mask; determinism; what ``layers.attention`` picks; and what
happens where the kernel cannot be built or the inputs are not for it."""

import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from finedual_jax import profiling
from finedual_jax.models import chunked_attention
from finedual_jax.models import cpu_attention
from finedual_jax.models import dropout
from finedual_jax.models import layers

# Without a C++ compiler the kernel cannot exist here (layers.attention then uses the chunked
# version, tested in test_attention.py); with one, a failed build fails these tests.
pytestmark = pytest.mark.skipif(shutil.which(cpu_attention._compiler()) is None,
                                reason='no C++ compiler on PATH to build the kernel with')


def test_the_kernel_builds_and_loads_with_this_machines_compiler():
  assert cpu_attention.available()


def _inputs(n, q_len, k_len, heads, depth, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (n, q_len, heads, depth))
  k = jax.random.normal(keys[1], (n, k_len, heads, depth))
  v = jax.random.normal(keys[2], (n, k_len, heads, depth))
  d_out = jax.random.normal(keys[3], (n, q_len, heads, depth))
  return q, k, v, d_out


def _value_and_vjp(fn, q, k, v, d_out):
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(d_out)


def _mask(kind, n, q_len, k_len, heads):
  rng = np.random.default_rng(1)
  if kind == 'none':
    return None
  if kind == 'keys':  # Padded keys, as the blocks' masks: [n, 1, 1, k_len].
    valid = np.arange(k_len)[None] < rng.integers(1, k_len + 1, n)[:, None]
    return jnp.asarray(valid[:, None, None, :])
  # Every (example, head, row) its own, one row fully masked: [n, heads, q_len, k_len].
  full = rng.random((n, heads, q_len, k_len)) < 0.7
  full[0, -1, 0] = False
  return jnp.asarray(full)


# (n, q_len, k_len, heads, depth): query rows past one 48-row block with 6-, 2- and 1-row
# tails, keys not a multiple of the 16-wide vectors, cross-attention lengths, head sizes 16-64.
SHAPES = [(3, 37, 37, 2, 16), (2, 50, 23, 3, 32), (2, 103, 61, 2, 64), (1, 49, 300, 1, 48)]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('mask_kind', ['none', 'keys', 'full'])
def test_kernel_equals_the_chunked_attention_forward_and_backward(shape, mask_kind):
  n, q_len, k_len, heads, depth = shape
  q, k, v, d_out = _inputs(n, q_len, k_len, heads, depth)
  mask = _mask(mask_kind, n, q_len, k_len, heads)
  got, got_grads = _value_and_vjp(
      lambda q, k, v: cpu_attention.dot_product_attention(q, k, v, mask), q, k, v, d_out)
  want, want_grads = _value_and_vjp(
      lambda q, k, v: chunked_attention.dot_product_attention(q, k, v, mask), q, k, v, d_out)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=2e-6)
  for name, g, w in zip('qkv', got_grads, want_grads, strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=2e-5,
                               err_msg=f'd_{name}')


def _textbook(q, k, v, mask, keep, rate):
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  scores = jnp.where(mask, scores, -0.7 * jnp.finfo(jnp.float32).max)
  p = jax.nn.softmax(scores, axis=-1)
  p = jnp.where(keep, p / dropout.keep_probability(rate), 0.0)
  return jnp.einsum('bhqk,bkhd->bqhd', p, v)


def test_dropout_uses_the_keep_mask_of_the_whole_score_tensor():
  n, q_len, k_len, heads, depth, rate = 2, 50, 41, 2, 32, 0.25
  q, k, v, d_out = _inputs(n, q_len, k_len, heads, depth)
  mask = _mask('keys', n, q_len, k_len, heads)
  rng = jax.random.key(7)
  keep = dropout.keep_mask(rng, (n, heads, q_len, k_len), rate)
  got, got_grads = _value_and_vjp(
      lambda q, k, v: cpu_attention.dot_product_attention(q, k, v, mask, dropout_rng=rng,
                                                          dropout_rate=rate), q, k, v, d_out)
  want, want_grads = _value_and_vjp(lambda q, k, v: _textbook(q, k, v, mask, keep, rate),
                                    q, k, v, d_out)
  assert 0.6 < float(jnp.mean(keep)) < 0.9  # Some dropped, most kept.
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  for name, g, w in zip('qkv', got_grads, want_grads, strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=5e-5,
                               err_msg=f'd_{name}')


def test_results_are_the_same_from_run_to_run():
  q, k, v, d_out = _inputs(4, 120, 120, 4, 64)
  mask = _mask('keys', 4, 120, 120, 4)
  fn = jax.jit(lambda q, k, v, d: _value_and_vjp(
      lambda q, k, v: cpu_attention.dot_product_attention(
          q, k, v, mask, dropout_rng=jax.random.key(3), dropout_rate=0.1), q, k, v, d))
  first, again = jax.device_get(fn(q, k, v, d_out)), jax.device_get(fn(q, k, v, d_out))
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(a, b)


def test_vmap_over_a_leading_axis_equals_a_loop():
  q, k, v, _ = _inputs(6, 20, 20, 2, 16)
  stack = lambda x: x.reshape(2, 3, *x.shape[1:])
  got = jax.vmap(cpu_attention.dot_product_attention)(stack(q), stack(k), stack(v))
  want = jnp.stack([cpu_attention.dot_product_attention(q[i:i + 3], k[i:i + 3], v[i:i + 3])
                    for i in (0, 3)])
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def _targets(fn, *args):
  return set(re.findall(r'custom_call_target="(finedual_attention_\w+)"',
                        jax.jit(fn).lower(*args).compile().as_text()))


def test_layers_attention_picks_the_kernel_on_cpu_where_it_supports_the_inputs(monkeypatch):
  q, k, v, _ = _inputs(2, 30, 30, 2, 16)
  mask = _mask('keys', 2, 30, 30, 2)
  grad = lambda q, k, v: jax.grad(lambda q: jnp.sum(layers.attention(q, k, v, mask=mask)))(q)
  assert _targets(grad, q, k, v) == {'finedual_attention_forward',
                                     'finedual_attention_backward'}
  np.testing.assert_allclose(
      np.asarray(layers.attention(q, k, v, mask=mask)),
      np.asarray(layers.attention(q, k, v, mask=mask, implementation='chunked')), atol=2e-6)
  # Not for it: head size 8, bfloat16; turned off; not built.
  small = [x[..., :8] for x in (q, k, v)]
  assert not _targets(lambda q, k, v: layers.attention(q, k, v, mask=mask), *small)
  half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  assert not _targets(lambda q, k, v: layers.attention(q, k, v, mask=mask), *half)
  monkeypatch.setenv(cpu_attention.OPT_OUT, '0')
  assert not _targets(lambda q, k, v: layers.attention(q, k, v, mask=mask), q, k, v)
  monkeypatch.delenv(cpu_attention.OPT_OUT)
  monkeypatch.setattr(cpu_attention, 'available', lambda: False)
  assert not _targets(lambda q, k, v: layers.attention(q, k, v, mask=mask), q, k, v)


def test_a_missing_or_failing_compiler_is_one_warning_and_no_kernel(tmp_path, monkeypatch):
  monkeypatch.setenv(cpu_attention.CACHE_ENV, str(tmp_path))
  load = cpu_attention._load.__wrapped__  # The uncached loader: nothing is registered on failure.
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  with pytest.warns(RuntimeWarning, match='no C.. compiler .*no-such-compiler.*chunked XLA'):
    assert load() is None
  monkeypatch.setenv('CXX', 'false')  # Found, exits 1.
  with pytest.warns(RuntimeWarning, match='failed with exit code 1'):
    assert load() is None
  assert not list(tmp_path.iterdir())  # Nothing half-built left behind.


def test_the_cache_name_depends_on_source_compiler_and_cpu(tmp_path, monkeypatch):
  path = cpu_attention.library_path()
  edited = tmp_path / 'cpu_attention.cc'
  edited.write_bytes(cpu_attention.SOURCE.read_bytes() + b'\n// edited\n')
  with monkeypatch.context() as patch:
    patch.setattr(cpu_attention, 'SOURCE', edited)
    assert cpu_attention.library_path() != path
  monkeypatch.setenv('CXX', 'g++-elsewhere')
  assert cpu_attention.library_path() != path
  monkeypatch.delenv('CXX', raising=False)
  monkeypatch.setattr(cpu_attention, '_cpu_identity', lambda: 'another cpu')
  assert cpu_attention.library_path() != path


@pytest.mark.parametrize('change, message', [
    (lambda q, k, v, m: (q.astype(jnp.bfloat16), k, v, m), 'expected float32 .* bfloat16'),
    (lambda q, k, v, m: (q[..., :8], k[..., :8], v[..., :8], m), 'head size 8'),
    (lambda q, k, v, m: (q, k[:, :5], v, m), r'key \(2, 5, 2, 16\) and value'),
    (lambda q, k, v, m: (q, k, v, m[:, :, :, :4]), r'mask shape \(2, 1, 1, 4\)'),
    (lambda q, k, v, m: (q[0], k, v, m), 'must be \\[batch, length, heads, head_dim\\]'),
])
def test_inputs_it_does_not_compute_are_named(change, message):
  q, k, v, _ = _inputs(2, 10, 10, 2, 16)
  args = change(q, k, v, _mask('keys', 2, 10, 10, 2))
  with pytest.raises(ValueError, match=message):
    cpu_attention.dot_product_attention(*args)
  with pytest.raises(ValueError, match='needs a dropout_rng'):
    cpu_attention.dot_product_attention(q, k, v, dropout_rate=0.1)


def test_profiling_counts_the_kernels_products():
  n, q_len, k_len, heads, depth = 2, 30, 20, 2, 16
  q, k, v, _ = _inputs(n, q_len, k_len, heads, depth)
  text = jax.jit(jax.grad(lambda q, k, v: jnp.sum(cpu_attention.dot_product_attention(
      q, k, v)), (0, 1, 2))).lower(q, k, v).compile().as_text()
  flops = profiling.instruction_flops(text)
  product = 2 * n * heads * q_len * k_len * depth
  calls = {name: f for name, f in flops.items() if f and 'ffi' in name}
  assert sorted(calls.values()) == [2 * product, 5 * product]  # Forward 2 products, backward 5.


def test_inside_shard_map_gradients_keep_the_inputs_mesh_axes():
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((1,), ('data',))
  q, k, v, _ = _inputs(2, 20, 20, 2, 16)
  mask = _mask('keys', 2, 20, 20, 2)

  def loss(q, k, v, mask):
    return jnp.sum(cpu_attention.dot_product_attention(q, k, v, mask) ** 2)

  per_device = jax.shard_map(lambda *a: jax.grad(loss, (0, 1, 2))(*a), mesh=mesh,
                             in_specs=P('data'), out_specs=P('data'))
  args = [jax.device_put(x, NamedSharding(mesh, P('data'))) for x in (q, k, v, mask)]
  got = jax.jit(per_device)(*args)
  want = jax.grad(loss, (0, 1, 2))(q, k, v, mask)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)
