"""Generates two-person motions from text with a trained run.

    python -m finedual_jax.sample --workdir finedual_run --text "Two people bow to each other."
    python -m finedual_jax.sample --workdir finedual_run --prompts prompts.txt --num_samples 3

Per-person texts come from --person1/--person2, else from a decomposition JSONL
(--decompositions, looked up by overall caption), else from the rule-based split; the output
says which. Per sample it writes features and joint positions (.npy), a GIF, a PNG strip of key
frames, a BVH per person and, when ffmpeg is available, an MP4; samples.json indexes them
(prompt, per-person texts, seed, checkpoint step, sampling settings, the run's config).
All samples go through one compiled sampler, in batches of --batch_size.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Sequence, TextIO

from absl import app
from absl import flags
from absl import logging

from finedual_jax import generation
from finedual_jax import host_memory
from finedual_jax import trainer
from finedual_jax.models import precision
from finedual_jax.motion import render

_WORKDIR = flags.DEFINE_string('workdir', 'finedual_run', 'A training run folder.')
_TEXT = flags.DEFINE_string('text', None, 'Overall caption of the interaction.')
_PROMPTS = flags.DEFINE_string('prompts', None, 'A file of captions, one per line (instead of '
                               '--text); blank lines and # comments are skipped.')
_PERSON1 = flags.DEFINE_string('person1', '', 'Person 1\'s text (with --person2; --text only).')
_PERSON2 = flags.DEFINE_string('person2', '', 'Person 2\'s text (with --person1; --text only).')
_DECOMPOSITIONS = flags.DEFINE_string('decompositions', None, 'A decomposition JSONL '
                                      '(data_pipelines.llm_decompose) to take per-person texts from.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'Samples per prompt.')
_LENGTH = flags.DEFINE_string('length', None, 'Frames (90) or seconds (3s); default: the '
                              'config\'s sample length.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_GUIDANCE_OVERALL = flags.DEFINE_float('guidance_overall', None, 'w_o (default: the config\'s).')
_GUIDANCE_INDIVIDUAL = flags.DEFINE_float('guidance_individual', None,
                                          'w_i (default: the config\'s).')
_DDIM_STEPS = flags.DEFINE_integer('ddim_steps', None, 'DDIM steps (default: the config\'s).')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Samples per compiled sampler call.')
_STEP = flags.DEFINE_integer('checkpoint', None, 'Checkpoint step (default: the latest).')
_RAW = flags.DEFINE_bool('raw_weights', False, 'Use the raw instead of the EMA weights.')
_VIDEO = flags.DEFINE_enum('video', 'auto', ['auto', 'on', 'off'],
                           'MP4 per sample: auto = when ffmpeg is available.')
_OUT = flags.DEFINE_string('out_dir', '', 'Output folder (default WORKDIR/samples/cli).')


class Progress:
  """A progress bar that redraws in place on a terminal and prints whole lines into a log."""

  def __init__(self, total: int, label: str, stream: TextIO = sys.stdout, width: int = 30):
    self.total, self.label, self.stream, self.width = total, label, stream, width
    self.start = time.perf_counter()
    self.tty = hasattr(stream, 'isatty') and stream.isatty()

  def update(self, done: int, note: str = '') -> None:
    filled = round(self.width * done / max(self.total, 1))
    elapsed = time.perf_counter() - self.start
    line = (f'{self.label} [{"#" * filled}{"." * (self.width - filled)}] {done}/{self.total} '
            f'{elapsed:.0f}s {note}'.rstrip())
    if self.tty:
      self.stream.write('\r' + line + ('\n' if done >= self.total else ''))
    else:
      self.stream.write(line + '\n')
    self.stream.flush()


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to sample: everything the CLI flags choose besides the prompts."""
  num_samples: int = 1
  length: str | int | None = None
  seed: int = 0
  guidance_overall: float | None = None
  guidance_individual: float | None = None
  ddim_steps: int | None = None
  batch_size: int = 8
  checkpoint: int | None = None
  raw_weights: bool = False
  video: str = 'auto'


def make_prompts(texts: Sequence[str], person1: str = '', person2: str = '',
                 decompositions: str | None = None) -> list[generation.Prompt]:
  """Prompts with their per-person texts; ``person1/2`` only for a single text."""
  if (person1 or person2) and len(texts) != 1:
    raise ValueError('--person1/--person2 give the texts of one prompt; with a prompt file use '
                     '--decompositions or the rule-based split.')
  lookup = generation.decompositions_by_text(decompositions) if decompositions else None
  return [generation.Prompt.from_text(t, person1, person2, lookup) for t in texts]


def sample_prompts(workdir: str | pathlib.Path, prompts: Sequence[generation.Prompt],
                   out_dir: str | pathlib.Path, settings: Settings = Settings(),
                   stream: TextIO = sys.stdout) -> pathlib.Path:
  """Generates ``settings.num_samples`` motions per prompt and writes them; returns the index."""
  if settings.num_samples < 1 or settings.batch_size < 1:
    raise ValueError(f'num_samples and batch_size must be >= 1, found {settings.num_samples} '
                     f'and {settings.batch_size}.')
  config, model, state, artifacts, schedule = trainer.load_trained(workdir, settings.checkpoint)
  length = generation.parse_length(settings.length or config.sample.length,
                                   max_len=config.data.max_len)
  if settings.video == 'on' and not render.ffmpeg_available():
    raise ValueError('--video=on but no ffmpeg was found: pip install imageio-ffmpeg (or install '
                     'ffmpeg), or use --video=auto.')
  video = settings.video == 'on' or (settings.video == 'auto' and render.ffmpeg_available())
  guidance = {
      'w_overall': config.diffusion.guidance_overall if settings.guidance_overall is None
                   else settings.guidance_overall,
      'w_individual': config.diffusion.guidance_individual
                      if settings.guidance_individual is None else settings.guidance_individual,
      'ddim_steps': settings.ddim_steps or config.diffusion.ddim_steps}
  # Every text must fit before anything is compiled (too long -> a clear error).
  for prompt in prompts:
    for text in (prompt.text, prompt.person1, prompt.person2):
      if artifacts.text_features is None:
        artifacts.tokenizer.encode(text, config.data.max_text_len, truncate=False)
      else:
        artifacts.text_features.lookup([text])
  sample_fn = generation.make_sampler(model, schedule, **guidance,
                                      compute_dtype=precision.compute_dtype(config.model))
  params = state.params if settings.raw_weights else state.ema_params
  jobs = [(i, j) for i in range(len(prompts)) for j in range(settings.num_samples)]
  out_dir = pathlib.Path(out_dir)
  for prompt in dict.fromkeys(prompts):
    print(f'per-person texts ({prompt.person_source}) for {prompt.text!r}: 1: {prompt.person1!r}'
          f'  2: {prompt.person2!r}', file=stream)
  progress = Progress(len(jobs), 'sampling', stream)
  progress.update(0)
  records = []
  batch = min(settings.batch_size, len(jobs))
  for start in range(0, len(jobs), batch):
    chunk = jobs[start:start + batch]
    padded = chunk + [chunk[-1]] * (batch - len(chunk))  # One compiled shape for every call.
    features = generation.generate(
        sample_fn, params, artifacts, [prompts[i] for i, _ in padded], length=length,
        max_len=config.data.max_len, max_text_len=config.data.max_text_len, seed=settings.seed,
        sample_ids=padded)
    for (i, j), sample in zip(chunk, features):
      stem = generation.sample_stem(i, prompts[i], j if settings.num_samples > 1 else None)
      record = generation.write_sample(out_dir, stem, prompts[i], sample,
                                       representation=artifacts.representation, video=video)
      records.append(dict(record, prompt_index=i, sample=j, seed=settings.seed))
      progress.update(len(records), stem)
  index = generation.write_index(
      out_dir, records, workdir=str(pathlib.Path(workdir).absolute()),
      checkpoint_step=int(state.step), weights='raw' if settings.raw_weights else 'ema',
      seed=settings.seed, length=length, **guidance, video=video, config=config.to_dict())
  print(f'{len(records)} samples in {out_dir} ({"GIF, MP4" if video else "GIF"}, PNG, BVH, .npy); '
        f'index {index}', file=stream)
  return index


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every save at INFO; keep the output readable.
    logging.set_verbosity(logging.WARNING)
  if (_TEXT.value is None) == (_PROMPTS.value is None):
    raise app.UsageError('give exactly one of --text and --prompts.')
  settings = Settings(
      num_samples=_NUM_SAMPLES.value, length=_LENGTH.value, seed=_SEED.value,
      guidance_overall=_GUIDANCE_OVERALL.value, guidance_individual=_GUIDANCE_INDIVIDUAL.value,
      ddim_steps=_DDIM_STEPS.value, batch_size=_BATCH.value, checkpoint=_STEP.value,
      raw_weights=_RAW.value, video=_VIDEO.value)
  out_dir = pathlib.Path(_OUT.value or pathlib.Path(_WORKDIR.value) / 'samples' / 'cli')
  try:
    texts = ([_TEXT.value] if _TEXT.value is not None
             else generation.read_prompt_file(_PROMPTS.value))
    prompts = make_prompts(texts, _PERSON1.value, _PERSON2.value, _DECOMPOSITIONS.value)
    sample_prompts(_WORKDIR.value, prompts, out_dir, settings)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None


if __name__ == '__main__':
  host_memory.reexec_for_host_memory()
  app.run(main)
