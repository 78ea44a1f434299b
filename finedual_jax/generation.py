"""Text -> two-person motion with a trained denoiser, and the artefacts written per sample."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from finedual_jax import chunks
from finedual_jax import xla_cpu
from finedual_jax.data import batch as batch_lib
from finedual_jax.data import decompose
from finedual_jax.data import decompositions as decompositions_lib
from finedual_jax.data import representation as representation_lib
from finedual_jax.data import text_files
from finedual_jax.data.pipeline import Artifacts
from finedual_jax.diffusion import sampler as sampler_lib
from finedual_jax.diffusion.schedule import Schedule
from finedual_jax.models import precision
from finedual_jax.motion import bvh
from finedual_jax.motion import render


@dataclasses.dataclass(frozen=True)
class Prompt:
  """An overall caption with its per-person texts and where those came from."""
  text: str
  person1: str
  person2: str
  person_source: str  # 'given' | 'decomposition file (<model>, <prompt version>)' | 'rule-based'

  @classmethod
  def from_text(cls, text: str, person1: str = '', person2: str = '',
                decompositions: Mapping[str, decompositions_lib.Decomposition] | None = None
                ) -> 'Prompt':
    """Per-person texts: given, else from ``decompositions`` (by overall text), else rules."""
    text = ' '.join(text.split())
    if not text:
      raise ValueError('the prompt text is empty; give a caption such as "Two people hug."')
    if bool(person1.strip()) != bool(person2.strip()):
      raise ValueError('give both per-person texts (person1 and person2) or neither.')
    if person1.strip():
      return cls(text, person1.strip(), person2.strip(), 'given')
    record = (decompositions or {}).get(text)
    if record is not None:
      return cls(text, record.person1, record.person2,
                 f'decomposition file ({record.model}, {record.prompt_version})')
    return cls(text, *decompose.rule_based_split(text), 'rule-based')


def decompositions_by_text(path: str | pathlib.Path
                           ) -> dict[str, decompositions_lib.Decomposition]:
  """A decomposition JSONL as a lookup by overall text (the first record of each text wins)."""
  records, _ = decompositions_lib.read_jsonl(path, 'strict')
  lookup = {}
  for record in records:
    lookup.setdefault(record.overall, record)
  return lookup


def read_prompt_file(path: str | pathlib.Path) -> list[str]:
  """Captions of a prompt file: one per line; blank lines and lines starting with # skipped."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'prompt file not found: {path}')
  lines = text_files.read_text(path).splitlines()
  prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith('#')]
  if not prompts:
    raise ValueError(f'{path}: no prompts (expected one caption per line).')
  return prompts


def parse_length(value: str | int, *, max_len: int, fps: int = 30) -> int:
  """'90' (frames) or '3s' / '2.5s' (seconds at ``fps``) -> frames, checked against max_len."""
  text = str(value).strip().lower()
  try:
    frames = round(float(text[:-1]) * fps) if text.endswith('s') else int(text)
  except ValueError:
    raise ValueError(f'length: expected frames (e.g. 90) or seconds (e.g. 3s), found '
                     f'{value!r}.') from None
  if not 1 <= frames <= max_len:
    raise ValueError(f'length must be between 1 and {max_len} frames (the model\'s maximum, '
                     f'{max_len / fps:.1f} s), found {frames} ({value}).')
  return frames


# A CPU sampler chunk's activations, rows x width, at most (4 MiB in float32; see below).
CPU_CHUNK_ELEMENTS = 1 << 20
CHUNK_ENV = 'FINEDUAL_SAMPLE_CHUNK'


def sample_chunk_size(length: int, width: int) -> int:
  """Examples the sampler denoises at a time: the whole batch (0) on a GPU/TPU; on a CPU as
  many as keep their activations (3 guidance branches x 2 persons x ``length`` frames rows,
  ``width`` wide) within ``CPU_CHUNK_ELEMENTS``.

  On a CPU a chunk whose activations stay in the caches runs faster than a whole batch: at the
  ``bench`` size (three guidance branches x two persons x T = 300 = 1,800 rows of width 512:
  3.7 MB per activation) a guided DDIM step took 588 ms per example at batch 1, 599 at 2, 652
  at 4, 657 at 8 and 773 at 32 on a 2-core AMD EPYC (Zen 4), so there it runs one example at a
  time. Small models are the other way round: the tiny one (width 32, T = 32) sampled a batch
  of 16 in 109-112 ms whole and 225-360 ms one example at a time, and gets the whole batch.
  ``FINEDUAL_SAMPLE_CHUNK=N`` sets N (0: the whole batch at once).
  """
  value = os.environ.get(CHUNK_ENV)
  if value is None:
    if jax.default_backend() != 'cpu':
      return 0
    return max(1, CPU_CHUNK_ELEMENTS // max(1, 3 * 2 * length * width))
  try:
    chunk = int(value)
  except ValueError:
    chunk = -1
  if chunk < 0:
    raise ValueError(f'{CHUNK_ENV}: expected a whole number of examples >= 0 (0: the whole '
                     f'batch at once), found {value!r}.')
  return chunk


def make_sampler(model, schedule: Schedule, *, w_overall: float, w_individual: float,
                 ddim_steps: int, compute_dtype: Any = jnp.float32, chunk: int | None = None):
  """Compiles ``sample(params, noise, mask, text, person) -> x0`` (normalised); ``text`` and
  ``person`` are token ids or ``batch.TextFeatures``, as ``batch.text_inputs`` gives them.

  The batch is sampled ``chunk`` examples at a time (a loop inside the one compiled program;
  None: ``sample_chunk_size`` for the model's width and the sampled length, 0: all at once).
  Examples do not interact, so each row's sample is the same whatever the chunk, up to float32
  rounding; with ``chunk=1`` it does not depend on the batch it is in at all.
  """

  def sample_all(params, noise, mask, text, person):
    def denoise(x_t, t, drop_overall, drop_individual):
      reps = x_t.shape[0] // noise.shape[0]
      tile = lambda a: jnp.tile(a, (reps,) + (1,) * (a.ndim - 1))  # The guidance branches.
      x0, _ = precision.apply(model, params, x_t, t, tile(mask), jax.tree.map(tile, text),
                              jax.tree.map(tile, person), drop_overall, drop_individual,
                              dtype=compute_dtype, deterministic=True)
      return x0 * jnp.tile(mask, (reps, 1))[:, :, None, None]

    guided = sampler_lib.guided_denoiser(denoise, w_overall, w_individual)
    return sampler_lib.ddim_sample(guided, schedule, noise * mask[:, :, None, None], ddim_steps)

  def sample(params, noise, mask, text, person):
    size = sample_chunk_size(noise.shape[1], model.width) if chunk is None else chunk
    return chunks.map_in_chunks(lambda _, *inputs: sample_all(params, *inputs), size, noise,
                                mask, text, person)

  # On CPU the sampler's products run through oneDNN (forward only: see xla_cpu).
  return jax.jit(sample, compiler_options=xla_cpu.forward_compiler_options())


def encode_texts(artifacts: Artifacts, texts: Sequence[str], person1: Sequence[str],
                 person2: Sequence[str], max_text_len: int, *, truncate: bool = False):
  """The denoiser's text inputs for N prompts: (overall, per-person) token ids [N, L] and
  [N, 2, L], or ``batch.TextFeatures`` when the run was trained on frozen text features."""
  n = len(texts)
  flat = [t for triple in zip(texts, person1, person2) for t in triple]
  if artifacts.text_features is not None:
    features, mask = artifacts.text_features.lookup(flat)
    features = jnp.asarray(features.reshape(n, 3, *features.shape[1:]))
    mask = jnp.asarray(mask.reshape(n, 3, -1))
    return (batch_lib.TextFeatures(features[:, 0], mask[:, 0]),
            batch_lib.TextFeatures(features[:, 1:], mask[:, 1:]))
  tokens = artifacts.tokenizer.encode(flat, max_text_len, truncate=truncate).reshape(n, 3, -1)
  return jnp.asarray(tokens[:, 0]), jnp.asarray(tokens[:, 1:])


def generate(sample_fn, params, artifacts: Artifacts, prompts: Sequence[Prompt], *,
             length: int, max_len: int, max_text_len: int, seed: int,
             sample_ids: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
  """Samples one motion per prompt; returns de-normalised features [N, 2, length, F].

  Row i's noise is keyed on ``(seed, *sample_ids[i])`` (default ``(i, 0)``), so a sample does
  not depend on which other prompts share its batch.
  """
  if not 1 <= length <= max_len:
    raise ValueError(f'length must be between 1 and {max_len} frames (the model\'s maximum), '
                     f'found {length}.')
  n = len(prompts)
  sample_ids = [(i, 0) for i in range(n)] if sample_ids is None else list(sample_ids)
  mask = np.zeros((n, max_len), np.float32)
  mask[:, :length] = 1.0
  shape = (max_len, 2, artifacts.representation.feature_dim)
  base = jax.random.key(seed)
  noise = jnp.stack([jax.random.normal(jax.random.fold_in(jax.random.fold_in(base, i), j), shape)
                     for i, j in sample_ids])
  text, person = encode_texts(artifacts, [p.text for p in prompts], [p.person1 for p in prompts],
                              [p.person2 for p in prompts], max_text_len)
  x0 = sample_fn(params, noise, jnp.asarray(mask), text, person)
  x0 = np.asarray(jax.device_get(x0))[:, :length]
  return artifacts.denormalise(x0).transpose(0, 2, 1, 3)


def _slug(text: str, limit: int = 48) -> str:
  return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')[:limit] or 'sample'


def write_sample(out_dir: str | pathlib.Path, stem: str, prompt: Prompt, features: np.ndarray,
                 *, fps: int = 30,
                 representation: representation_lib.Representation = representation_lib.POSITIONS,
                 video: bool = False) -> dict[str, Any]:
  """Writes one sample's artefacts; returns its record (prompt, texts, file paths).

  ``.npy`` features [2, T, F] and joint positions [2, T, 22, 3] (metres), a GIF, a PNG strip
  of key frames, one BVH per person (SMPL hierarchy, 30 fps) and, with ``video``, an MP4.
  With the rotation representation the positions come from the SMPL rest skeleton (for
  viewing only; the record's ``positions_exact`` says so) and the BVH from their IK.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  representation.check_features(features, 'write_sample features')
  positions = representation.positions(features)  # [2, T, 22, 3]
  paths = {'features': out_dir / f'{stem}_features.npy',
           'positions': out_dir / f'{stem}_positions.npy',
           'gif': out_dir / f'{stem}.gif', 'png': out_dir / f'{stem}.png'}
  for key, array in (('features', features), ('positions', positions)):
    tmp = paths[key].with_name(paths[key].name + '.tmp.npy')
    np.save(tmp, array.astype(np.float32))
    os.replace(tmp, paths[key])
  render.render_gif(positions, paths['gif'], title=prompt.text, fps=fps)
  render.render_strip(positions, paths['png'], title=prompt.text)
  if representation.exact_positions:
    paths['bvh_person1'], paths['bvh_person2'] = bvh.write_pair_bvh(out_dir / stem, features,
                                                                    fps=fps)
  else:
    for p in (1, 2):
      paths[f'bvh_person{p}'] = bvh.write_bvh(out_dir / f'{stem}_person{p}.bvh',
                                              positions[p - 1], fps=fps)
  if video:
    paths['mp4'] = render.render_video(positions, out_dir / f'{stem}.mp4', title=prompt.text,
                                       fps=fps)
  return dict(dataclasses.asdict(prompt), **{k: str(v) for k, v in paths.items()},
              num_frames=int(features.shape[1]), representation=representation.name,
              positions_exact=representation.exact_positions)


def sample_stem(index: int, prompt: Prompt, sample: int | None = None) -> str:
  """File stem of prompt ``index`` (and its ``sample``-th draw): '003_two_people_bow[_s01]'."""
  stem = f'{index:03d}_{_slug(prompt.text)}'
  return stem if sample is None else f'{stem}_s{sample:02d}'


def write_index(out_dir: str | pathlib.Path, records: list[dict], **extra) -> pathlib.Path:
  path = pathlib.Path(out_dir) / 'samples.json'
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(dict(extra, samples=records), indent=2))
  os.replace(tmp, path)
  return path


def config_from_dict(values: dict) -> ml_collections.ConfigDict:
  """The training config as saved with a checkpoint -> a locked ConfigDict."""
  config = ml_collections.ConfigDict(values)
  config.lock()
  return config
