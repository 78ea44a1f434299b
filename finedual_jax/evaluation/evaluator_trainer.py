"""Trains the InterCLIP-architecture evaluator on a built data set, with our tokenizer.

What it learns from (``experiments/evaluator.py``): the training split through the same input
pipeline as the denoiser — every caption, the mirrored copies the build adds, random crops of
up to ``data.max_len`` rows, both person swaps — with the features de-normalised again inside
the step (the evaluator, like InterCLIP, sees raw 262-d features). Texts are the data set's
SentencePiece ids (BOS ... EOS, padding masked). The loss is InterCLIP's symmetric InfoNCE
over the batch; AdamW with warm-up + cosine and global-norm clipping; dropout from a key folded
by step. Every ``eval_every`` steps it reports the validation split's loss and text-to-motion
top-1/top-5 retrieval among ``eval.pool_size`` clips (eval mode: caption 0, first frames).

Writes ``WORKDIR/checkpoints`` (orbax, resumed automatically, input pipeline included),
``WORKDIR/metrics.jsonl`` and, at the end, ``WORKDIR/evaluator/`` in ``save_converted``'s
format with the tokenizer copied beside it, which ``evaluate --evaluator`` loads.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from finedual_jax import checkpointing
from finedual_jax import train_state as train_state_lib
from finedual_jax import xla_cpu
from finedual_jax.data import batch as batch_lib
from finedual_jax.data import pipeline
from finedual_jax.data import tokenizer as tokenizer_lib
from finedual_jax.evaluation import convert_interclip
from finedual_jax.evaluation import evaluator as evaluator_lib
from finedual_jax.evaluation import evaluator_files
from finedual_jax.evaluation import ground_truth
from finedual_jax.evaluation import metrics

EXPORT_DIR = 'evaluator'
RETRIEVAL_TOP_K = 5


@flax.struct.dataclass
class EvaluatorState:
  """What a step reads and writes; checkpointed whole."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def build_model(config: ml_collections.ConfigDict,
                tokenizer: tokenizer_lib.Tokenizer) -> evaluator_lib.InterCLIP:
  """InterCLIP with ``config.model``'s sizes and the SentencePiece vocabulary and end token."""
  try:
    return evaluator_lib.InterCLIP(**config.model, vocab_size=tokenizer.vocab_size,
                                   end_token=tokenizer_lib.EOS_ID, mask_text_padding=True)
  except TypeError as e:
    raise ValueError(f'config.model: {e}') from None


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  return train_state_lib.make_optimizer(total_steps=config.train.num_steps, **config.optimizer)


def make_train_step(model: evaluator_lib.InterCLIP, tx: optax.GradientTransformation,
                    mean: np.ndarray, std: np.ndarray) -> Callable:
  """``step(state, batch) -> (state, metrics)``, compiled, the state donated."""
  mean, std = jnp.asarray(mean), jnp.asarray(std)

  def step(state: EvaluatorState, batch: dict[str, jax.Array]):
    dropout = jax.random.fold_in(state.rng, state.step)
    features = batch[batch_lib.MOTION] * std + mean  # The evaluator sees raw features.

    def loss_fn(params):
      motion, text = model.apply({'params': params}, features, batch[batch_lib.MASK],
                                 batch[batch_lib.TEXT_TOKENS], deterministic=False,
                                 rngs={'dropout': dropout})
      loss, terms = evaluator_lib.clip_loss(motion, text)
      hits = jnp.argmax(motion @ text.T, axis=1) == jnp.arange(motion.shape[0])
      return loss, dict(terms, batch_top1=jnp.mean(hits))

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    terms = dict(terms, loss=loss, grad_norm=optax.tree.norm(grads),
                 latent_scale=params['latent_scale'][0])
    return EvaluatorState(state.step + 1, params, opt_state, state.rng), terms

  return jax.jit(step, donate_argnums=0)


def make_embed_fn(model: evaluator_lib.InterCLIP) -> Callable:
  """``fn(params, features, mask, tokens) -> (motion, text)`` in eval mode, compiled."""
  return jax.jit(lambda p, f, m, t: model.apply({'params': p}, f, m, t),
                 compiler_options=xla_cpu.forward_compiler_options())


def embed_clips(apply: Callable, params: Any, clips: ground_truth.Clips, tokens: np.ndarray,
                batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(motion, text) embeddings [N, E] of ``clips`` and their caption ``tokens`` (fixed batch)."""
  features, mask = clips.features, clips.mask
  motions, texts = [], []
  for start in range(0, len(clips), batch_size):
    sl = slice(start, start + batch_size)
    count = features[sl].shape[0]
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], batch_size - count, axis=0)])
    m, t = apply(params, pad(features[sl]), pad(mask[sl]), pad(tokens[sl]))
    motions.append(np.asarray(m)[:count])
    texts.append(np.asarray(t)[:count])
  return np.concatenate(motions), np.concatenate(texts)


def retrieval_scores(motion: np.ndarray, text: np.ndarray, pool_size: int) -> dict[str, float]:
  """Loss and text-to-motion top-1/top-5 within consecutive pools of ``pool_size`` clips.

  The pool is ``min(pool_size, N)``, the last incomplete pool is dropped (as R-Precision
  does); chance is ``k / pool`` for top-k. ``loss`` is the InfoNCE of each pool, averaged.
  """
  pool = min(pool_size, motion.shape[0])
  top_k = min(RETRIEVAL_TOP_K, pool)
  hits = metrics.r_precision(text, motion, batch_size=pool, top_k=top_k)
  losses = [float(evaluator_lib.clip_loss(jnp.asarray(motion[s:s + pool]),
                                          jnp.asarray(text[s:s + pool]))[0])
            for s in range(0, (motion.shape[0] // pool) * pool, pool)]
  return {'loss': float(np.mean(losses)), 'top1': float(hits[0]),
          f'top{top_k}': float(hits[top_k - 1]), 'pool': pool, 'chance_top1': 1.0 / pool}


def describe_scores(scores: dict[str, float]) -> str:
  top_k = min(RETRIEVAL_TOP_K, scores['pool'])
  return (f'loss {scores["loss"]:.4f} | top-1 {scores["top1"]:.3f} | top-{top_k} '
          f'{scores[f"top{top_k}"]:.3f} (pool {scores["pool"]}, chance top-1 '
          f'{scores["chance_top1"]:.3f})')


def evaluate_split(apply: Callable, params, tokenizer: tokenizer_lib.Tokenizer,
                   clips: ground_truth.Clips, config: ml_collections.ConfigDict
                   ) -> dict[str, float]:
  """Retrieval scores of ``clips`` (eval mode: caption 0, first frames) with ``apply``."""
  tokens = tokenizer.encode(list(clips.texts), config.model.context_length)
  motion, text = embed_clips(apply, params, clips, tokens, config.eval.batch_size)
  return retrieval_scores(motion, text, config.eval.pool_size)


def export(params: Any, model: evaluator_lib.InterCLIP, tokenizer: tokenizer_lib.Tokenizer,
           out_dir: pathlib.Path, source: dict) -> pathlib.Path:
  """``save_converted`` layout plus ``spm.model``, recorded as ``sentencepiece:spm.model``."""
  out_dir.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(tokenizer.path, out_dir / evaluator_files.SENTENCEPIECE_FILE)
  return convert_interclip.save_converted(
      jax.device_get(params), evaluator_lib.config_of(model), out_dir, source=source,
      tokenizer=f'sentencepiece:{evaluator_files.SENTENCEPIECE_FILE}')


def _write_metrics(path: pathlib.Path, step: int, values: dict[str, float]) -> None:
  with path.open('a') as f:
    f.write(json.dumps({'step': step, **values}) + '\n')


def train_evaluator(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                    log: Callable[[str], None] = lambda msg: print(msg, flush=True)) -> dict:
  """Trains (or resumes) in ``workdir`` and exports; returns a summary with the last scores."""
  workdir = pathlib.Path(workdir).absolute()
  if not config.data.dataset_dir:
    raise ValueError('config.data.dataset_dir: required (a folder written by python -m '
                     'data_pipelines.prepare); pass --dataset_dir.')
  dataset_dir = pathlib.Path(config.data.dataset_dir).absolute()
  artifacts = pipeline.load_artifacts(dataset_dir)
  if artifacts.representation.feature_dim != config.model.feature_dim:
    raise ValueError(f'{dataset_dir} stores the {artifacts.representation.name} representation '
                     f'({artifacts.representation.feature_dim}-d features); the evaluator reads '
                     f'{config.model.feature_dim}-d features (config.model.feature_dim).')
  if config.data.max_len + 1 > config.model.max_positions:
    raise ValueError(f'config.data.max_len={config.data.max_len} needs model.max_positions > '
                     f'{config.data.max_len}, found {config.model.max_positions}.')
  workdir.mkdir(parents=True, exist_ok=True)
  tokenizer = artifacts.tokenizer
  model = build_model(config, tokenizer)
  tx = make_optimizer(config)
  val = (ground_truth.load_clips(dataset_dir, config.eval.split, max_frames=config.data.max_len)
         if config.eval.split else None)

  rng_init, rng_dropout = jax.random.split(jax.random.key(config.seed))
  length = config.data.max_len
  params = jax.jit(model.init)(rng_init, jnp.zeros((1, length, 2, config.model.feature_dim)),
                               jnp.ones((1, length)),
                               jnp.zeros((1, config.model.context_length), jnp.int32))['params']
  state = EvaluatorState(jnp.zeros((), jnp.int32), params, tx.init(params), rng_dropout)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=config.train.max_to_keep,
                                            training=True)
  config_dict = config.to_dict()
  if checkpointer.latest_step() is not None:
    state, _ = checkpointer.restore(checkpointing.abstract_like(state))
    log(f'resumed from {checkpointer.directory} at step {int(state.step)}')
  (workdir / 'config.json').write_text(json.dumps(config_dict, indent=2))
  log(f'evaluator: {num_params:,} parameters, vocabulary {tokenizer.vocab_size} '
      f'(SentencePiece {tokenizer.path}); data {dataset_dir}; batch {config.train.batch_size}')

  records = pipeline.records_in_memory(dataset_dir, 'train', config.data, log)

  def loader(seed):
    return pipeline.make_loader(
        dataset_dir, 'train', artifacts, batch_size=config.train.batch_size,
        max_len=config.data.max_len, max_text_len=config.model.context_length, train=True,
        seed=seed, swap_before_p=config.data.swap_before_p,
        swap_after_p=config.data.swap_after_p, worker_count=config.data.worker_count,
        in_memory=records)

  start = int(state.step)
  batches = iter(loader(config.seed))
  if start:
    problem = checkpointer.restore_data(batches, start)
    if problem:
      batches = iter(loader(config.seed + start))
      log(f'warning: {problem}; the input pipeline restarts with seed {config.seed + start}')
  step_fn = make_train_step(model, tx, artifacts.mean, artifacts.std)
  embed_fn = make_embed_fn(model)
  metrics_path = workdir / 'metrics.jsonl'
  scores: dict[str, float] = {}
  train_metrics: dict[str, float] = {}
  tick, tick_step = time.perf_counter(), start
  for step in range(start + 1, config.train.num_steps + 1):
    batch = next(batches)
    data_state = batches.get_state()
    state, device_metrics = step_fn(state, {k: jnp.asarray(batch[k]) for k in
                                            (batch_lib.MOTION, batch_lib.MASK,
                                             batch_lib.TEXT_TOKENS)})
    train_metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not np.isfinite(train_metrics['loss']):
      raise FloatingPointError(f'step {step}: non-finite evaluator loss; terms: {train_metrics}')
    last = step == config.train.num_steps
    if step % config.train.log_every == 0 or last:
      now = time.perf_counter()
      rate = (step - tick_step) / max(now - tick, 1e-9)
      tick, tick_step = now, step
      _write_metrics(metrics_path, step, train_metrics)
      log(f'step {step}/{config.train.num_steps} | loss {train_metrics["loss"]:.4f} | batch '
          f'top-1 {train_metrics["batch_top1"]:.2f} | scale {train_metrics["latent_scale"]:.2f} '
          f'| {rate:.1f} steps/s')
    if val is not None and (step % config.train.eval_every == 0 or last):
      scores = evaluate_split(embed_fn, state.params, tokenizer, val, config)
      _write_metrics(metrics_path, step, {f'val_{k}': v for k, v in scores.items()})
      log(f'step {step}: {config.eval.split} ' + describe_scores(scores))
    if step % config.train.checkpoint_every == 0 or last:
      checkpointer.save(step, state, config_dict, data_state)
  checkpointer.wait()
  checkpointer.close()
  if val is not None and not scores:  # Resumed at the last step: nothing was trained now.
    scores = evaluate_split(make_embed_fn(model), state.params, tokenizer, val, config)
  out = export(state.params, model, tokenizer, workdir / EXPORT_DIR,
               source={'trained_by': 'finedual_jax.train_evaluator', 'workdir': str(workdir),
                       'dataset_dir': str(dataset_dir), 'step': int(state.step),
                       'val': scores})
  log(f'evaluator exported to {out} (load it with python -m finedual_jax.evaluate '
      f'--evaluator {out})')
  return {'step': int(state.step), 'train': train_metrics, 'val': scores, 'export': str(out),
          'workdir': str(workdir), 'dataset_dir': str(dataset_dir), 'params': num_params}
