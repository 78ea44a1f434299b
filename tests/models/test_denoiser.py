"""Every denoiser (FineDual, its ablations, the baselines): shapes, person-swap equivariance,
padding invariance, conditioning, and the auxiliary outputs the losses need."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import finedual
from finedual_jax.models import factory

B, T, L, V = 2, 12, 8, 50
VARIANTS = {
    'finedual': dict(name='finedual'),
    'no_distance': dict(name='finedual', use_distance_predictor=False),
    'no_graph': dict(name='finedual', use_graph=False),
    'no_refinement': dict(name='finedual', use_refinement=False),
    'intergen': dict(name='intergen', num_layers=2),
    'in2in': dict(name='in2in', num_layers=2),
}
TINY = dict(width=32, num_heads=2, ff_dim=64, text_width=32, text_layers=1, text_heads=2,
            dropout=0.0)
# One block of each kind: what these tests check does not depend on depth, and each FineDual
# variant's initialiser compiles 15-35% faster than with the default two (measured here).
TINY_FINEDUAL = dict(TINY, graph_hidden=16, embed_dim=16, graph_rounds=1, individual_layers=1,
                     interaction_layers=1, refinement_layers=1)


def _model(variant):
  fields = dict(VARIANTS[variant])
  extra = TINY_FINEDUAL if fields['name'] == 'finedual' else TINY
  return factory.build_model(ml_collections.ConfigDict(dict(extra, **fields)), vocab_size=V,
                             max_text_len=L)


def _inputs():
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (B, T, 2, 262))
  t = jnp.array([10, 700])
  mask = jnp.ones((B, T)).at[1, 9:].set(0.0)
  text = jax.random.randint(keys[1], (B, L), 4, V).at[:, 6:].set(0)
  persons = jax.random.randint(keys[2], (B, 2, L), 4, V).at[:, :, 5:].set(0)
  return x, t, mask, text, persons


def perturb(params, scale=0.05, seed=1):
  """Every weight moved by ``scale`` * N(0, 1), drawn on the host (nothing to compile): the head
  is zero-initialised (the prediction starts at 0) and AdaLN gates start closed, so tests of
  what the network mixes need this."""
  rng = np.random.default_rng(seed)
  return jax.device_put(jax.tree.map(
      lambda p: np.asarray(p) + scale * rng.standard_normal(p.shape, np.float32), params))


@functools.cache
def _initial_params(variant):
  """Initialised once per variant (compiled: flax's initialisers are one program)."""
  return jax.jit(_model(variant).init)(jax.random.key(3), *_inputs())['params']


@functools.cache
def _perturbed_params(variant):
  return perturb(_initial_params(variant))


@pytest.fixture(scope='module', params=sorted(VARIANTS))
def setup(request):
  model, params = _model(request.param), _perturbed_params(request.param)
  apply = jax.jit(lambda *a: model.apply({'params': params}, *a))
  return request.param, apply, _inputs()


def test_output_shape_zero_init_head_and_aux():
  x, t, mask, text, persons = _inputs()
  for variant in VARIANTS:
    params = {'params': _initial_params(variant)}
    out, aux = jax.jit(_model(variant).apply)(params, x, t, mask, text, persons)
    assert out.shape == (B, T, 2, 262), variant
    np.testing.assert_array_equal(np.asarray(out), 0.0)
    if VARIANTS[variant]['name'] != 'finedual':
      assert aux == {}
      continue
    assert aux['individual_motion'].shape == aux['individual_text'].shape == (B, 2, 16)
    assert aux['overall_motion'].shape == aux['overall_text'].shape == (B, 16)
    has_distances = variant not in ('no_distance', 'no_graph')
    assert ('part_distances' in aux) == has_distances, variant
    if has_distances:
      assert aux['part_distances'].shape == (B, T, 5, 5)
      assert np.all(np.asarray(aux['part_distances']) >= 0)


def test_ablations_remove_their_parameters():
  x, t, mask, text, persons = _inputs()
  names = {}
  for variant in ('finedual', 'no_distance', 'no_graph', 'no_refinement'):
    params = jax.eval_shape(_model(variant).init, jax.random.key(0), x, t, mask, text,
                            persons)['params']
    names[variant] = set(params)
  assert {'distance', 'graph'} <= names['finedual']
  assert 'distance' not in names['no_distance'] and 'graph' in names['no_distance']
  assert not {'distance', 'graph'} & names['no_graph']
  assert not any(n.startswith('refinement_') for n in names['no_refinement'])


def test_swapping_persons_and_their_texts_swaps_the_output(setup):
  variant, apply, (x, t, mask, text, persons) = setup
  out, aux = apply(x, t, mask, text, persons)
  swapped, aux_swapped = apply(x[:, :, ::-1], t, mask, text, persons[:, ::-1])
  np.testing.assert_allclose(np.asarray(swapped), np.asarray(out[:, :, ::-1]), atol=1e-5)
  if 'part_distances' in aux:  # Person 1's part i to person 2's part j becomes (j, i).
    np.testing.assert_allclose(np.asarray(aux_swapped['part_distances']),
                               np.asarray(aux['part_distances']).swapaxes(-1, -2), atol=1e-5)
  if 'overall_motion' in aux:  # The dual-motion feature does not know who is person 1.
    np.testing.assert_allclose(np.asarray(aux_swapped['overall_motion']),
                               np.asarray(aux['overall_motion']), atol=1e-5)
  # Swapping only the motion (not the texts) is a different input for models that read the
  # individual texts, and gives a different output.
  if variant != 'intergen':
    other, _ = apply(x[:, :, ::-1], t, mask, text, persons)
    assert not np.allclose(np.asarray(other), np.asarray(out[:, :, ::-1]), atol=1e-3)


def test_padding_never_changes_valid_outputs(setup):
  _, apply, (x, t, mask, text, persons) = setup
  out, aux = apply(x, t, mask, text, persons)
  out2, aux2 = apply(x.at[1, 9:].set(1e3), t, mask, text, persons)
  np.testing.assert_allclose(np.asarray(out2[1, :9]), np.asarray(out[1, :9]), atol=1e-4)
  np.testing.assert_allclose(np.asarray(out2[0]), np.asarray(out[0]), atol=1e-5)
  for key in ('individual_motion', 'overall_motion'):
    if key in aux:
      np.testing.assert_allclose(np.asarray(aux2[key]), np.asarray(aux[key]), atol=1e-4)


def test_texts_and_condition_dropout_change_the_prediction(setup):
  _, apply, (x, t, mask, text, persons) = setup
  out = np.asarray(apply(x, t, mask, text, persons)[0])
  assert not np.allclose(out, np.asarray(apply(x, t, mask, text[::-1], persons)[0]), atol=1e-3)
  yes, no = jnp.ones((B,), bool), jnp.zeros((B,), bool)
  dropped = np.asarray(apply(x, t, mask, text, persons, yes, no)[0])
  # With the overall text dropped, its content no longer matters.
  dropped_other = np.asarray(apply(x, t, mask, text[::-1], persons, yes, no)[0])
  np.testing.assert_allclose(dropped, dropped_other, atol=1e-5)
  assert not np.allclose(dropped, out, atol=1e-3)


def test_config_parameter_counts_are_stable_and_paper_scale_is_intergen_sized():
  """Counts from shapes only; a change to an architecture shows up here on purpose."""
  counts = {}
  for size in ('tiny', 'small', 'paper'):
    config = finedual.get_config(f'size={size}')
    model = factory.build_model(config.model, vocab_size=1000,
                                max_text_len=config.data.max_text_len)
    counts[size] = factory.count_parameters(model, max_len=config.data.max_len,
                                            max_text_len=config.data.max_text_len)
  assert counts['tiny'] < counts['small'] < counts['paper']
  # InterGen's denoiser (8 blocks of width 1024) has on the order of 10^8 parameters.
  assert 5e7 < counts['paper'] < 4e8, counts


def test_param_counts_command_covers_every_experiment_and_ablations_shrink_the_model(capsys):
  from experiments import param_counts
  table = param_counts.counts()
  for size in ('tiny', 'small', 'paper'):
    full = table['finedual', size]
    assert table['finedual_no_alignment', size] == full  # A loss weight, not a module.
    for ablation in ('no_distance', 'no_graph', 'no_refinement'):
      assert table[f'finedual_{ablation}', size] < full, (ablation, size)
    assert table['intergen', size] == table['in2in', size]  # Same blocks, other conditions.
  param_counts.main()
  out = capsys.readouterr().out
  assert all(name in out for name in param_counts.EXPERIMENTS)


def test_batched_guidance_equals_separate_passes(setup):
  from finedual_jax.diffusion import sampler
  _, apply, (x, t, mask, text, persons) = setup
  yes, no = jnp.ones((B,), bool), jnp.zeros((B,), bool)

  def denoise(x_t, t_, drop_overall, drop_individual):
    reps = x_t.shape[0] // B
    return apply(x_t, t_, jnp.tile(mask, (reps, 1)), jnp.tile(text, (reps, 1)),
                 jnp.tile(persons, (reps, 1, 1)), drop_overall, drop_individual)[0]

  guided = sampler.guided_denoiser(denoise, w_overall=2.5, w_individual=1.5)(x, t)
  uncond = apply(x, t, mask, text, persons, yes, yes)[0]
  overall = apply(x, t, mask, text, persons, no, yes)[0]
  individual = apply(x, t, mask, text, persons, yes, no)[0]
  expected = uncond + 2.5 * (overall - uncond) + 1.5 * (individual - uncond)
  np.testing.assert_allclose(np.asarray(guided), np.asarray(expected), atol=1e-4)


@pytest.mark.parametrize('variant', ['finedual'])  # The baselines use the same block().
def test_remat_changes_memory_not_results(variant):
  x, t, mask, text, persons = _inputs()
  fields = dict(VARIANTS[variant])
  extra = TINY_FINEDUAL if fields['name'] == 'finedual' else TINY
  models = [factory.build_model(ml_collections.ConfigDict(dict(extra, remat=remat, **fields)),
                                vocab_size=V, max_text_len=L) for remat in (False, True)]
  params = _perturbed_params(variant)  # models[0]'s: the same fields, remat off.
  remat_shapes = jax.eval_shape(models[1].init, jax.random.key(3), x, t, mask, text, persons)
  assert jax.tree.structure(remat_shapes['params']) == jax.tree.structure(params)

  def loss(model, p):
    out, _ = model.apply({'params': p}, x, t, mask, text, persons, deterministic=False,
                         rngs={'dropout': jax.random.key(2)})
    return jnp.sum(out ** 2)

  values = [jax.jit(jax.value_and_grad(functools.partial(loss, m)))(params) for m in models]
  np.testing.assert_allclose(values[0][0], values[1][0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(values[0][1]), jax.tree.leaves(values[1][1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # Reassociated float32 sums.
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(models[1], p)))(params))
  assert 'remat' in jaxpr or 'checkpoint' in jaxpr


@pytest.mark.parametrize('variant', ['finedual', 'intergen', 'in2in'])
def test_training_with_dropout_draws_masks_from_the_dropout_rng(variant):
  """The small and paper configs train with dropout 0.1 in every attention, feed-forward and
  text layer: a training pass needs the 'dropout' rng, its masks follow that rng, and the
  deterministic pass ignores it."""
  fields = dict(VARIANTS[variant])
  extra = dict(TINY_FINEDUAL if fields['name'] == 'finedual' else TINY, dropout=0.1)
  model = factory.build_model(ml_collections.ConfigDict(dict(extra, **fields)), vocab_size=V,
                              max_text_len=L)
  x, t, mask, text, persons = _inputs()
  params = _perturbed_params(variant)  # Dropout adds no parameters.

  @jax.jit
  def train(seed):
    loss = lambda p: jnp.sum(model.apply(
        {'params': p}, x, t, mask, text, persons, deterministic=False,
        rngs={'dropout': jax.random.key(seed)})[0] ** 2)
    return jax.value_and_grad(loss)(params)

  (a, grads), (again, _), (b, _) = train(0), train(0), train(1)
  assert a == again and a != b
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  run = jax.jit(lambda p: model.apply({'params': p}, x, t, mask, text, persons)[0])
  np.testing.assert_array_equal(np.asarray(run(params)), np.asarray(run(params)))
