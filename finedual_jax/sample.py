"""Generates two-person motions from text with a trained run.

    python -m finedual_jax.sample --workdir finedual_run --text "Two people bow to each other."

Per-person texts come from --person1/--person2 or, if absent, from the rule-based split; the
output says which. Writes features and joint positions (.npy), a GIF and a PNG strip per sample
and a samples.json index into --out_dir (default WORKDIR/samples/cli).
"""

from __future__ import annotations

import pathlib

from absl import app
from absl import flags
from absl import logging

from finedual_jax import generation
from finedual_jax import trainer

_WORKDIR = flags.DEFINE_string('workdir', 'finedual_run', 'A training run folder.')
_TEXT = flags.DEFINE_string('text', None, 'Overall caption of the interaction.')
_PERSON1 = flags.DEFINE_string('person1', '', 'Person 1\'s text (with --person2).')
_PERSON2 = flags.DEFINE_string('person2', '', 'Person 2\'s text (with --person1).')
_LENGTH = flags.DEFINE_integer('length', 0, 'Frames to generate (0: the config\'s sample length).')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_STEP = flags.DEFINE_integer('checkpoint', None, 'Checkpoint step (default: the latest).')
_RAW = flags.DEFINE_bool('raw_weights', False, 'Use the raw instead of the EMA weights.')
_OUT = flags.DEFINE_string('out_dir', '', 'Output folder (default WORKDIR/samples/cli).')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every save at INFO; keep the output readable.
    logging.set_verbosity(logging.WARNING)
  try:
    prompt = generation.Prompt.from_text(_TEXT.value or '', _PERSON1.value, _PERSON2.value)
    config, model, state, artifacts, schedule = trainer.load_trained(_WORKDIR.value, _STEP.value)
    sample_fn = generation.make_sampler(
        model, schedule, w_overall=config.diffusion.guidance_overall,
        w_individual=config.diffusion.guidance_individual, ddim_steps=config.diffusion.ddim_steps)
    params = state.params if _RAW.value else state.ema_params
    features = generation.generate(
        sample_fn, params, artifacts, [prompt], length=_LENGTH.value or config.sample.length,
        max_len=config.data.max_len, max_text_len=config.data.max_text_len, seed=_SEED.value)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  out_dir = pathlib.Path(_OUT.value or pathlib.Path(_WORKDIR.value) / 'samples' / 'cli')
  print(f'per-person texts ({prompt.person_source}): 1: {prompt.person1!r}  2: {prompt.person2!r}')
  record = generation.write_sample(out_dir, 0, prompt, features[0],
                                         representation=artifacts.representation)
  index = generation.write_index(out_dir, [record], step=int(state.step), seed=_SEED.value)
  print(f'wrote {record["gif"]}, {record["png"]} and {index}')


if __name__ == '__main__':
  app.run(main)
