"""Interaction graph and distance predictor: dense NumPy reference, distance gating, person swap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from finedual_jax.models.distance_predictor import DistancePredictor
from finedual_jax.models.interaction_graph import (INTER, INTRA, InteractionGraph,
                                                   dense_reference, graph_topology)
from finedual_jax.motion import body_parts

B, T, K, D, H, HIDDEN = 2, 3, 5, 16, 8, 12


def swap_persons(streams):
  """[2B, ...] (b0p0, b0p1, b1p0, ...) -> each stream's partner (the denoiser's `_other`)."""
  return streams.reshape(-1, 2, *streams.shape[1:])[:, ::-1].reshape(streams.shape)


def perturbed(params, seed):
  # Biases start at zero; perturb every weight so the tests see all parameters at work.
  # (NumPy noise: one eager jax.random call per leaf shape would compile each.)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: p + 0.3 * rng.standard_normal(p.shape, np.float32), params)


@pytest.fixture(scope='module')
def inputs():
  keys = jax.random.split(jax.random.key(0), 3)
  tokens = jax.random.normal(keys[0], (2 * B, T, K, H))
  # Distances around D_K = 1 m so the gates take values across (0, 1).
  distances = jax.random.uniform(keys[1], (2 * B, T, K, K), maxval=2.0)
  return tokens, distances


@pytest.fixture(scope='module')
def graphs(inputs):
  """{gated: (model, params, jitted apply)} for both variants, built once."""
  tokens, distances = inputs
  built = {}
  for gated in (True, False):
    model = InteractionGraph(hidden=HIDDEN, gated=gated)
    params = perturbed(jax.jit(model.init)(jax.random.key(1), tokens, distances)['params'], 2)
    apply = jax.jit(lambda t, d, model=model, params=params: model.apply({'params': params}, t, d))
    built[gated] = model, params, apply
  return built


@pytest.fixture(params=[True, False], ids=['gated', 'ungated'])
def graph(request, graphs):
  return graphs[request.param]


@pytest.fixture(scope='module')
def predictor():
  model = DistancePredictor(hidden=HIDDEN)
  h = jax.random.normal(jax.random.key(3), (2 * B, T, D))
  params = perturbed(jax.jit(model.init)(jax.random.key(4), h)['params'], 5)
  return h, jax.jit(lambda x: model.apply({'params': params}, x))


def test_topology_counts_and_symmetry():
  topo = graph_topology(K)
  num_kinematic = len(body_parts.KINEMATIC_EDGES)
  assert len(topo.senders) == 2 * 2 * num_kinematic + 2 * K * K == 66
  assert (topo.edge_type == INTRA).sum() == topo.num_intra == 2 * 2 * num_kinematic
  edges = set(zip(topo.senders.tolist(), topo.receivers.tolist()))
  assert len(edges) == len(topo.senders) and all(s != r for s, r in edges)
  same_person = (topo.senders < K) == (topo.receivers < K)
  np.testing.assert_array_equal(same_person, topo.edge_type == INTRA)
  # Every inter-person part pair, both directions.
  assert {(s, r) for s, r, e in zip(topo.senders, topo.receivers, topo.edge_type)
          if e == INTER} == {(s, r) for s in range(2 * K) for r in range(2 * K)
                             if (s < K) != (r < K)}
  # The person swap (node i <-> K + i) maps the edge set onto itself.
  swap = lambda n: (n + K) % (2 * K)
  assert {(swap(s), swap(r)) for s, r in edges} == edges
  assert graph_topology(K) is topo  # built once


def test_matches_dense_reference(graph, inputs):
  model, params, apply = graph
  tokens, distances = inputs
  out = apply(tokens, distances)
  assert out.shape == tokens.shape
  ref = dense_reference(model, params, tokens, distances)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)


def test_person_swap_swaps_graph_outputs(graph, inputs):
  _, _, apply = graph
  tokens, distances = inputs
  out = apply(tokens, distances)
  swapped = apply(swap_persons(tokens), swap_persons(distances))
  np.testing.assert_allclose(swapped, swap_persons(out), atol=1e-5)


def test_far_partner_sends_no_messages(graphs, inputs):
  tokens, distances = inputs
  model, params, apply = graphs[True]
  far = jnp.full_like(distances, 100.0)
  noise = jax.random.normal(jax.random.key(7), tokens.shape)
  is_p0 = (jnp.arange(2 * B) % 2 == 0)[:, None, None, None]
  out = apply(tokens, far)
  for keep in (is_p0, ~is_p0):  # replace person 1's parts, then person 0's
    replaced = apply(jnp.where(keep, tokens, noise), far)
    np.testing.assert_allclose(jnp.where(keep, replaced, 0), jnp.where(keep, out, 0), atol=1e-6)
  # The saturated gate still has finite gradients.
  grad = jax.jit(jax.grad(lambda d: jnp.sum(apply(tokens, d))))(far)
  assert np.isfinite(np.asarray(grad)).all()


def test_ungated_ignores_distances(graphs, inputs):
  tokens, distances = inputs
  model, params, apply = graphs[False]
  assert 'msg_edge_distance' not in params['round_0']
  out = jax.jit(lambda t: model.apply({'params': params}, t))(tokens)
  np.testing.assert_allclose(out, apply(tokens, distances), atol=1e-6)
  with pytest.raises(ValueError, match='gated=False'):
    jax.eval_shape(InteractionGraph(hidden=HIDDEN).init, jax.random.key(1), tokens)


def test_jit_compiles_once_per_shape():
  model = InteractionGraph(hidden=HIDDEN, rounds=1)
  params = jax.eval_shape(model.init, jax.random.key(1), jnp.zeros((2, 1, K, H)),
                          jnp.zeros((2, 1, K, K)))
  params = jax.tree.map(lambda p: jnp.ones(p.shape, p.dtype), params)
  traces = []

  @jax.jit
  def apply(t, d):
    traces.append(t.shape)
    return model.apply(params, t, d)

  for batch in (2, 3, 2, 3):
    apply(jnp.ones((2 * batch, T, K, H)), jnp.ones((2 * batch, T, K, K)))
  # The topology is a compile-time constant: one trace per batch shape, none on repeat.
  assert traces == [(4, T, K, H), (6, T, K, H)]


def test_distance_predictor_shapes_sign_and_symmetry(predictor):
  h, apply = predictor
  distances, tokens = apply(h)
  assert distances.shape == (2 * B, T, K, K) and tokens.shape == (2 * B, T, K, HIDDEN)
  assert (np.asarray(distances) >= 0).all()
  # Stream s at (i, j) is its partner at (j, i), exactly.
  np.testing.assert_array_equal(distances, swap_persons(distances).swapaxes(-1, -2))
  swapped_distances, swapped_tokens = apply(swap_persons(h))
  np.testing.assert_allclose(swapped_distances, swap_persons(distances), atol=1e-5)
  np.testing.assert_allclose(swapped_tokens, swap_persons(tokens), atol=1e-5)


def _assert_close_to_scale(name, actual, expected, tolerance=3e-5):
  scale = float(np.abs(np.asarray(expected)).max())
  error = float(np.abs(np.asarray(actual) - np.asarray(expected)).max())
  assert error <= tolerance * scale, (name, error, scale)


@pytest.mark.parametrize('gated', [True, False], ids=['gated', 'ungated'])
def test_dense_and_jraph_message_passing_agree(graphs, inputs, gated):
  """The fixed-topology form and jraph's edge lists: same outputs and gradients."""
  tokens, distances = inputs
  model, params, _ = graphs[gated]
  results = {}
  for message_passing in ('dense', 'jraph'):
    variant = model.clone(message_passing=message_passing)

    def loss(p, t, d, variant=variant):
      outputs = variant.apply({'params': p}, t, d)
      return jnp.sum(jnp.sin(outputs)), outputs  # sin: gradients that vary per entry

    results[message_passing] = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, tokens, distances)
  ((dense_loss, dense_out), dense_grads), ((jraph_loss, jraph_out), jraph_grads) = (
      results['dense'], results['jraph'])
  # Float32 sums in another order: each result within 3e-5 of its largest entry (up to 6e-6
  # seen on an AMD Zen 4 for the gradients). The loss sums 720 terms that mostly cancel (4.46
  # from terms of up to 1 each), so its tolerance is set by the terms, not by the sum.
  _assert_close_to_scale('outputs', dense_out, jraph_out)
  terms = float(np.abs(np.sin(np.asarray(jraph_out))).sum())
  assert abs(float(dense_loss) - float(jraph_loss)) <= 1e-6 * terms, (dense_loss, jraph_loss)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(dense_grads)[0],
                          jax.tree.leaves(jraph_grads), strict=True):
    _assert_close_to_scale(jax.tree_util.keystr(path), a, b)
  if not gated:  # The ungated graph ignores the distances.
    assert not np.asarray(dense_grads[2]).any()


def test_dense_message_passing_compiles_without_gathers_or_scatters(graphs, inputs):
  tokens, distances = inputs
  model, params, _ = graphs[True]
  texts = {}
  for message_passing in ('dense', 'jraph'):
    variant = model.clone(message_passing=message_passing)
    grad = jax.jit(jax.grad(lambda t, d, variant=variant: jnp.sum(
        variant.apply({'params': params}, t, d)), argnums=(0, 1)))
    texts[message_passing] = grad.lower(tokens, distances).compile().as_text()
  assert ' scatter(' in texts['jraph'] and ' gather(' in texts['jraph']  # what the test looks for
  assert ' scatter(' not in texts['dense'] and ' gather(' not in texts['dense']


def test_unknown_message_passing_is_named(inputs):
  tokens, distances = inputs
  with pytest.raises(ValueError, match="message_passing must be one of .*'sparse'"):
    jax.eval_shape(InteractionGraph(hidden=HIDDEN, message_passing='sparse').init,
                   jax.random.key(1), tokens, distances)
