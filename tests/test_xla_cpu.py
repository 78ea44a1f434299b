"""oneDNN for forward-only programs on XLA:CPU: the compiler options, that XLA takes them, that
the products that crashed oneDNN's fused partitions compile, and that the sampler uses them and
agrees with XLA's own kernels."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import default
from finedual_jax import generation
from finedual_jax import trainer
from finedual_jax import xla_cpu
from finedual_jax.diffusion.schedule import Schedule
from finedual_jax.evaluation import evaluator as evaluator_lib
from finedual_jax.evaluation import evaluator_files
from finedual_jax.evaluation import evaluator_trainer
from finedual_jax.models.factory import build_model


# Where this JAX's XLA:CPU takes the options but calls no oneDNN (JAX 0.8.2), the options are
# never given (what test_options_that_call_no_onednn_are_not_given checks where oneDNN runs), so
# there is nothing for these tests to check.
needs_onednn = pytest.mark.skipif(
    not xla_cpu.onednn_dots_available(),
    reason=f"JAX {jax.__version__}'s XLA:CPU puts no dot on oneDNN with these options")


@needs_onednn
def test_options_are_given_on_cpu_unless_turned_off(monkeypatch):
  assert jax.default_backend() == 'cpu'
  monkeypatch.delenv(xla_cpu.OPT_OUT, raising=False)
  assert xla_cpu.forward_compiler_options() == xla_cpu.ONEDNN_DOTS
  monkeypatch.setenv(xla_cpu.OPT_OUT, '0')
  assert xla_cpu.forward_compiler_options() is None


def _products(x, w):
  # (2 * x) @ w.T is what oneDNN's `dot` fusion type could not compile (the process died);
  # the gradient and the per-head batched product are what the model runs.
  q = x.reshape(4, 24, 32)
  grad = jax.grad(lambda x: jnp.sum(jnp.tanh(x @ w.T) ** 2))(x)
  return (2 * x) @ w.T, grad, jnp.einsum('bqd,bkd->bqk', q, q)


@needs_onednn
def test_products_go_to_onednn_and_agree_with_xla_kernels(monkeypatch):
  monkeypatch.delenv(xla_cpu.OPT_OUT, raising=False)
  x = jax.random.normal(jax.random.key(0), (96, 32))
  w = jax.random.normal(jax.random.key(1), (64, 32))
  onednn = jax.jit(_products, compiler_options=xla_cpu.forward_compiler_options())
  default = jax.jit(_products)
  assert xla_cpu.ONEDNN_CALL in onednn.lower(x, w).compile().as_text()
  assert xla_cpu.ONEDNN_CALL not in default.lower(x, w).compile().as_text()
  for got, want in zip(onednn(x, w), default(x, w), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_the_sampler_runs_on_onednn_and_samples_what_xla_samples(monkeypatch):
  config = default.get_config('size=tiny')
  model = build_model(config.model, vocab_size=64, max_text_len=config.data.max_text_len)
  params = trainer.init_params(model, config, jax.random.key(0))
  schedule = Schedule.cosine(config.diffusion.num_steps)
  length, text_len = 20, config.data.max_text_len
  args = (params, jax.random.normal(jax.random.key(1), (1, length, 2, model.feature_dim)),
          jnp.ones((1, length)), jax.random.randint(jax.random.key(2), (1, text_len), 1, 64),
          jax.random.randint(jax.random.key(3), (1, 2, text_len), 1, 64))

  def sample(opt_out):
    if opt_out:
      monkeypatch.setenv(xla_cpu.OPT_OUT, '0')
    else:
      monkeypatch.delenv(xla_cpu.OPT_OUT, raising=False)
    fn = generation.make_sampler(model, schedule, w_overall=2.0, w_individual=1.0, ddim_steps=4)
    compiled = fn.lower(*args).compile()
    return xla_cpu.ONEDNN_CALL in compiled.as_text(), compiled(*args)

  (on, onednn), (off, default_) = sample(False), sample(True)
  assert on and not off
  np.testing.assert_allclose(onednn, default_, rtol=1e-3, atol=1e-3)


def test_options_this_xla_does_not_know_are_not_given(monkeypatch):
  monkeypatch.delenv(xla_cpu.OPT_OUT, raising=False)
  monkeypatch.setattr(xla_cpu, 'ONEDNN_DOTS', {'xla_cpu_no_such_option': True})
  assert xla_cpu.forward_compiler_options() is None


@needs_onednn
def test_options_that_call_no_onednn_are_not_given(monkeypatch):
  monkeypatch.delenv(xla_cpu.OPT_OUT, raising=False)
  monkeypatch.setattr(xla_cpu, 'ONEDNN_DOTS', dict(xla_cpu.ONEDNN_DOTS, xla_cpu_use_onednn=False))
  assert xla_cpu.forward_compiler_options() is None


@needs_onednn
def test_a_persistent_compilation_cache_gets_programs_it_can_store(monkeypatch, tmp_path):
  monkeypatch.delenv(xla_cpu.OPT_OUT, raising=False)
  compiles, storable = xla_cpu._probe(tuple(xla_cpu.ONEDNN_DOTS.items()))  # pylint: disable=protected-access
  assert compiles
  previous = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update('jax_compilation_cache_dir', str(tmp_path))
    with_cache = xla_cpu.forward_compiler_options()
  finally:
    jax.config.update('jax_compilation_cache_dir', previous)
  assert with_cache == (xla_cpu.ONEDNN_DOTS if storable else None)
  assert xla_cpu.forward_compiler_options() == xla_cpu.ONEDNN_DOTS  # The cache off again.


@needs_onednn
def test_the_evaluators_embeddings_run_on_onednn_and_agree_with_xla(monkeypatch):
  monkeypatch.delenv(xla_cpu.OPT_OUT, raising=False)
  model = evaluator_lib.InterCLIP(**evaluator_lib.tiny_config())
  rng = np.random.default_rng(0)
  features = rng.normal(size=(3, 10, 2, 262)).astype(np.float32)
  mask = (np.arange(10)[None] < np.array([[10], [4], [1]])).astype(np.float32)
  tokens = np.zeros((3, 16), np.int32)
  tokens[:, :3] = [62, 5, model.end_token]
  params = jax.jit(model.init)(jax.random.key(0), features, mask, tokens)['params']
  loaded = evaluator_files.Evaluator(pathlib.Path('in-memory'), model, params, 'test',
                                     lambda texts: tokens[:len(texts)], {}, batch_size=2)
  compiled = [loaded._motion_fn.lower(params, features[:2], mask[:2]).compile(),
              loaded._text_fn.lower(params, tokens[:2]).compile(),
              evaluator_trainer.make_embed_fn(model).lower(params, features, mask,
                                                           tokens).compile()]
  assert all(xla_cpu.ONEDNN_CALL in c.as_text() for c in compiled)
  want_motion, want_text = jax.jit(model.apply)({'params': params}, features, mask, tokens)
  np.testing.assert_allclose(loaded.embed_motions(features, mask), want_motion, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(loaded.embed_texts(['a', 'b', 'c']), want_text, rtol=1e-4,
                             atol=1e-4)
