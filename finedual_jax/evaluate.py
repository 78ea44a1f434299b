"""Evaluates trained runs with the InterHuman protocol and writes a comparison.

    python -m finedual_jax.evaluate --workdir runs/finedual --workdir runs/intergen \\
        --evaluator eval_model/ [--dataset_dir DIR] [--out_dir OUT] [--quick]

For every clip of the test split (caption 0 and its per-person texts, the true length capped at
the runs' max_len; ``evaluation/ground_truth.py``) each run generates a motion per replication
with its own DDIM and guidance settings (``--ddim_steps``/``--guidance_*`` override them for
all runs), plus ``--mm_texts`` x ``--mm_samples`` motions for MModality. Generated motions are
cached in ``OUT/cache/<run>/rep_<r>.npz`` (and ``mm_rep_<r>.npz``), so an interrupted
evaluation resumes where it stopped and a repeated one regenerates nothing. The evaluator
(converted official weights or ``python -m finedual_jax.train_evaluator``) embeds motions and
captions; ``evaluation/runner.py`` defines every metric.

Writes ``OUT/metrics.json`` (every metric's mean, 95% interval and per-replication values, for
the ground truth and each run, with the evaluator, data set, checkpoints and settings),
``OUT/metrics.md`` (a table, "mean ± interval") and ``OUT/metrics.png`` (bars with intervals).
``--quick``: 32 clips, 2 replications, 8 x 6 MModality samples (explicit flags still win), for
smoke runs; OUT defaults to WORKDIR/eval (WORKDIR/eval_quick with --quick) of the first run.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Sequence, TextIO

from absl import logging

from finedual_jax import host_memory
from finedual_jax.evaluation import evaluator_files
from finedual_jax.evaluation import generated
from finedual_jax.evaluation import ground_truth
from finedual_jax.evaluation import report
from finedual_jax.evaluation import runner
from finedual_jax.sample import Progress

QUICK = {'max_clips': 32, 'replications': 2, 'mm_texts': 8, 'mm_samples': 6}


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the flags choose besides the runs, the evaluator and the folders."""
  split: str = 'test'
  replications: int = 20
  mm_texts: int = 100
  mm_samples: int = 30
  mm_replications: int | None = None  # None: every replication (the protocol).
  max_clips: int | None = None        # The first clips of the split only.
  max_frames: int | None = None       # None: the smallest max_len of the runs.
  batch_size: int = 32                # Motions per compiled sampler call.
  ddim_steps: int | None = None       # None: each run's config.
  guidance_overall: float | None = None
  guidance_individual: float | None = None
  raw_weights: bool = False
  seed: int = 0                       # Shuffles and pair draws of the metrics.
  cache_dtype: str = 'float32'
  evaluator_tokenizer: str = ''
  quick: bool = False

  @classmethod
  def quick_mode(cls, **explicit) -> 'Settings':
    return cls(**{**QUICK, **explicit, 'quick': True})

  def check(self) -> None:
    for name in ('replications', 'mm_texts', 'mm_samples', 'batch_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'--{name} must be >= 1, found {getattr(self, name)}.')
    if self.mm_samples < 2:
      raise ValueError(f'--mm_samples must be >= 2 (MModality compares pairs), found '
                       f'{self.mm_samples}.')
    if self.cache_dtype not in ('float32', 'float16'):
      raise ValueError(f'--cache_dtype must be float32 or float16, found {self.cache_dtype!r}.')
    for name in ('mm_replications', 'max_clips', 'max_frames', 'ddim_steps'):
      value = getattr(self, name)
      if value is not None and value < (0 if name == 'mm_replications' else 1):
        raise ValueError(f'--{name} must be positive, found {value}.')


def run_names(workdirs: Sequence[str | pathlib.Path]) -> list[str]:
  """Each run's folder name, made unique with a suffix (the cache and table keys)."""
  names = []
  for workdir in workdirs:
    name = pathlib.Path(workdir).absolute().name or 'run'
    candidate, k = name, 2
    while candidate in names or candidate == runner.GROUND_TRUTH:
      candidate, k = f'{name}_{k}', k + 1
    names.append(candidate)
  return names


def _check_compatible(run: generated.Run, evaluator: evaluator_files.Evaluator) -> None:
  representation = run.artifacts.representation
  if representation.feature_dim != evaluator.feature_dim:
    raise ValueError(f'run {run.workdir} was trained on the {representation.name} representation '
                     f'({representation.feature_dim}-d features), but the evaluator '
                     f'{evaluator.directory} reads {evaluator.feature_dim}-d features; evaluate '
                     'it with an evaluator trained on that representation.')


def evaluate(workdirs: Sequence[str | pathlib.Path], evaluator_path: str | pathlib.Path,
             out_dir: str | pathlib.Path | None = None, settings: Settings = Settings(),
             dataset_dir: str | pathlib.Path | None = None,
             stream: TextIO | None = None) -> dict:
  """Evaluates the runs in ``workdirs`` against the ground truth; returns metrics.json's dict."""
  stream = stream or sys.stdout
  settings.check()
  if not workdirs:
    raise ValueError('give at least one run (--workdir DIR).')
  evaluator = evaluator_files.load(evaluator_path, settings.evaluator_tokenizer,
                                   batch_size=settings.batch_size)
  runs = []
  for workdir, name in zip(workdirs, run_names(workdirs)):
    run = generated.load_run(workdir, name, ddim_steps=settings.ddim_steps,
                             guidance_overall=settings.guidance_overall,
                             guidance_individual=settings.guidance_individual,
                             raw_weights=settings.raw_weights)
    _check_compatible(run, evaluator)
    runs.append(run)
  out_dir = pathlib.Path(out_dir or runs[0].workdir / ('eval_quick' if settings.quick else 'eval'))
  dataset_dir = pathlib.Path(dataset_dir or runs[0].artifacts.dataset_dir).absolute()
  max_frames = settings.max_frames or min(run.max_len for run in runs)
  for run in runs:
    if max_frames > run.max_len:
      raise ValueError(f'--max_frames {max_frames} exceeds the max_len {run.max_len} of run '
                       f'{run.workdir}.')
  if max_frames > evaluator.max_frames:
    raise ValueError(f'motions of {max_frames} frames exceed what the evaluator '
                     f'{evaluator.directory} reads ({evaluator.max_frames}); pass --max_frames.')
  clips = ground_truth.load_clips(dataset_dir, settings.split, max_frames=max_frames,
                                  limit=settings.max_clips)
  if clips.features.shape[-1] != evaluator.feature_dim:
    raise ValueError(f'{dataset_dir} holds {clips.features.shape[-1]}-d features; the evaluator '
                     f'{evaluator.directory} reads {evaluator.feature_dim}-d ones.')
  mm_replications = min(settings.replications, settings.replications
                        if settings.mm_replications is None else settings.mm_replications)
  print(f'evaluating {len(runs)} run(s) on {len(clips)} clips of {dataset_dir} '
        f'({settings.split}), {settings.replications} replications; out: {out_dir}', file=stream)
  reference = runner.make_reference(clips, evaluator, mm_texts=settings.mm_texts,
                                    mm_samples=settings.mm_samples, seed=settings.seed)
  rows = {runner.GROUND_TRUTH: {'metrics': runner.ground_truth_row(reference,
                                                                   settings.replications)}}
  for run in runs:
    total = runner.total_jobs(len(clips), settings.replications, mm_replications,
                              len(reference.mm_clips), settings.mm_samples)
    bar = Progress(total, run.name, stream)
    bar.update(0)
    result = runner.evaluate_run(
        reference, run, generated.Cache(out_dir / 'cache' / run.name),
        replications=settings.replications, mm_replications=mm_replications,
        mm_samples=settings.mm_samples, batch_size=settings.batch_size,
        cache_dtype=settings.cache_dtype, progress=bar.update)
    print(f'{run.name}: generated {result["generated"]} motions, '
          f'{total - result["generated"]} from the cache', file=stream)
    rows[run.name] = {'run': run.describe(), 'metrics': result['metrics'],
                      'generated_motions': result['generated'],
                      'has_distance_predictor': result['has_distance_predictor']}
  results = {
      'evaluator': evaluator.describe(),
      'dataset': {'dir': str(dataset_dir), 'split': settings.split, 'num_clips': len(clips),
                  'clip_ids': list(clips.clip_ids), 'clips_fingerprint': clips.fingerprint(),
                  'caption': f'caption {ground_truth.CAPTION_INDEX} of each clip',
                  'max_frames': max_frames},
      'settings': dict(dataclasses.asdict(settings), mm_replications=mm_replications,
                       mm_texts_used=len(reference.mm_clips),
                       distance_timesteps=list(generated.DISTANCE_TIMESTEPS)),
      'protocol': dataclasses.asdict(reference.protocol),
      'rows': rows}
  paths = report.write(results, out_dir)
  print(report.markdown(results), file=stream)
  print(f'wrote {paths["json"]}, {paths["markdown"]}, {paths["plot"]}', file=stream)
  return results


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
  parser = argparse.ArgumentParser(prog='python -m finedual_jax.evaluate',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', action='append', required=True,
                      help='a training run (repeat to compare runs)')
  parser.add_argument('--evaluator', required=True,
                      help='evaluator folder (convert_interclip --out, or a train_evaluator '
                      'workdir / its evaluator/ folder)')
  parser.add_argument('--evaluator_tokenizer', default='',
                      help='clip:<bpe_simple_vocab_16e6.txt.gz> or sentencepiece:<spm.model> when '
                      'the evaluator folder does not name its tokenizer')
  parser.add_argument('--dataset_dir', default=None,
                      help='built data set with the reference clips (default: the first run\'s)')
  parser.add_argument('--split', default='test')
  parser.add_argument('--out_dir', default=None)
  parser.add_argument('--quick', action='store_true',
                      help=f'smoke run: {QUICK} unless given explicitly')
  defaults = Settings()
  for name, kind in (('replications', int), ('mm_texts', int), ('mm_samples', int),
                     ('mm_replications', int), ('max_clips', int), ('max_frames', int),
                     ('batch_size', int), ('ddim_steps', int), ('guidance_overall', float),
                     ('guidance_individual', float), ('seed', int)):
    parser.add_argument(f'--{name}', type=kind, default=None,
                        help=f'default: {getattr(defaults, name)}' + (
                            ' (the run\'s config)' if getattr(defaults, name) is None else ''))
  parser.add_argument('--raw_weights', action='store_true', help='raw instead of EMA weights')
  parser.add_argument('--cache_dtype', choices=('float32', 'float16'), default='float32',
                      help='float16 halves the cache on disk')
  args = parser.parse_args(argv)
  explicit = {name: getattr(args, name) for name in (
      'replications', 'mm_texts', 'mm_samples', 'mm_replications', 'max_clips', 'max_frames',
      'batch_size', 'ddim_steps', 'guidance_overall', 'guidance_individual', 'seed')
              if getattr(args, name) is not None}
  explicit.update(split=args.split, raw_weights=args.raw_weights, cache_dtype=args.cache_dtype,
                  evaluator_tokenizer=args.evaluator_tokenizer)
  settings = Settings.quick_mode(**explicit) if args.quick else Settings(**explicit)
  return args, settings


def main(argv: Sequence[str] | None = None) -> int:
  args, settings = parse_args(argv)
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  try:
    evaluate(args.workdir, args.evaluator, args.out_dir, settings, args.dataset_dir)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  host_memory.reexec_for_host_memory()
  sys.exit(main())
