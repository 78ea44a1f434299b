"""What the trainer looks at on the validation split while training: a loss and a few samples.

The validation loss is the training loss on a fixed set of val examples (the first
``train.eval_batches`` global batches of the split in order, wrapping around when the split is
smaller; no augmentation), with the EMA weights, no dropout, no condition dropout and
timesteps and noise keyed on ``train.eval_seed`` and the example's index: every evaluation of a
run, and of a resumed run, sees the same draws. Samples render the first
``train.sample_prompts`` val captions (with their per-person texts) to GIFs.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from finedual_jax import generation
from finedual_jax import parallel
from finedual_jax import train_step as train_step_lib
from finedual_jax.data import pipeline
from finedual_jax.diffusion.schedule import Schedule
from finedual_jax.models import precision

SPLIT = 'val'


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


class Validator:
  """Validation loss and samples for one run; built once, compiled at first use."""

  def __init__(self, config: ml_collections.ConfigDict, dataset_dir: pathlib.Path,
               artifacts: pipeline.Artifacts, model, schedule: Schedule,
               dp: parallel.DataParallel, loss_weights: dict[str, float], process_index: int,
               process_count: int):
    self.config = config
    self.artifacts = artifacts
    self.model = model
    self.schedule = schedule
    self.dp = dp
    self.loss_weights = loss_weights
    self.process_index = process_index
    self.process_count = process_count
    self.source = pipeline.data_source(dataset_dir, SPLIT)
    if not len(self.source):
      raise ValueError(f'{dataset_dir}: the {SPLIT!r} split is empty.')
    # One micro-batch per device at a time, as in training: it fits wherever training does.
    self.global_batch = config.train.batch_size // config.train.grad_accum_steps
    self._evaluate = None
    self._sample = None

  def _batches(self):
    """This process's rows of each validation batch (host arrays)."""
    make = pipeline.MakeBatch(self.artifacts, max_len=self.config.data.max_len,
                              max_text_len=self.config.data.max_text_len, train=False)
    local = self.global_batch // self.process_count
    rng = np.random.default_rng(0)  # Unused without augmentation; MakeBatch's signature.
    for b in range(self.config.train.eval_batches):
      first = b * self.global_batch + self.process_index * local
      indices = np.arange(first, first + local)
      batch = make.random_map([self.source[int(i % len(self.source))] for i in indices], rng)
      batch[train_step_lib.EVAL_INDEX] = indices.astype(np.int32)
      yield batch

  def loss(self, ema_params: Any) -> dict[str, float]:
    """Mean validation loss terms; ``ema_params`` in the DataParallel backend's form."""
    if self._evaluate is None:
      c = self.config
      self._evaluate = self.dp.compile(train_step_lib.make_eval_step(
          self.model, self.schedule, mean=jnp.asarray(self.artifacts.mean),
          std=jnp.asarray(self.artifacts.std), loss_weights=self.loss_weights,
          geometric_max_t=c.losses.geometric_max_t, nce_temperature=c.losses.nce_temperature,
          seed=c.train.eval_seed, compute_dtype=precision.compute_dtype(c.model)))
    totals: dict[str, float] = {}
    for batch in self._batches():
      # Read back per batch: one evaluation in flight at a time (DESIGN §7).
      terms = self.dp.fetch(self._evaluate(ema_params, self.dp.to_device(batch)))
      for k, v in terms.items():
        totals[k] = totals.get(k, 0.0) + v / self.config.train.eval_batches
    return totals

  def prompts(self) -> list[generation.Prompt]:
    count = min(self.config.train.sample_prompts, len(self.source))
    out = []
    for i in range(count):
      element = self.source[i]
      out.append(generation.Prompt(_text(element['captions'][0]),
                                   _text(element['person1_texts'][0]),
                                   _text(element['person2_texts'][0]), 'given'))
    return out

  def samples(self, ema_params: Any, step: int, workdir: pathlib.Path) -> list[dict]:
    """Renders the val prompts with ``ema_params`` (process-local copies) to
    ``workdir/samples/val_step_<step>/``; call on process 0 only."""
    c = self.config
    if self._sample is None:
      self._sample = generation.make_sampler(
          self.model, self.schedule, w_overall=c.diffusion.guidance_overall,
          w_individual=c.diffusion.guidance_individual, ddim_steps=c.diffusion.ddim_steps)
    prompts = self.prompts()
    features = generation.generate(self._sample, ema_params, self.artifacts, prompts,
                                   length=c.sample.length, max_len=c.data.max_len,
                                   max_text_len=c.data.max_text_len, seed=c.sample.seed)
    out_dir = workdir / 'samples' / f'val_step_{step}'
    records = [generation.write_sample(out_dir, generation.sample_stem(i, prompt), prompt,
                                       features[i],
                                       representation=self.artifacts.representation)
               for i, prompt in enumerate(prompts)]
    generation.write_index(out_dir, records, step=step, seed=c.sample.seed, split=SPLIT)
    return records
