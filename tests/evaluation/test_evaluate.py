"""The evaluator trainer and the evaluate command on the tiny trained run (``trained_run``).

One tiny evaluator is trained per module on the run's synthetic data set; the evaluate
command then runs end to end with ``--quick``, reuses its cache, and rejects bad inputs with
messages that name the path.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import evaluator as evaluator_config
from finedual_jax import evaluate
from finedual_jax import generation
from finedual_jax.evaluation import convert_interclip
from finedual_jax.evaluation import evaluator as ev
from finedual_jax.evaluation import evaluator_files
from finedual_jax.evaluation import evaluator_trainer
from finedual_jax.evaluation import generated
from finedual_jax.evaluation import ground_truth
from finedual_jax.evaluation import runner

REPO = pathlib.Path(__file__).resolve().parents[2]
EMBEDDING_KEYS = {'r_precision_top1', 'r_precision_top2', 'r_precision_top3', 'fid', 'mm_dist',
                  'diversity'}
POSITION_KEYS = {'penetration_rate', 'penetration_depth', 'foot_skating'}


@pytest.fixture(scope='module')
def trained_evaluator(trained_run, tmp_path_factory):
  """(summary, seconds): the tiny evaluator trained on the run's data set."""
  _, _, run_summary = trained_run
  config = evaluator_config.get_config('size=tiny')
  config.data.dataset_dir = run_summary['dataset_dir']
  workdir = tmp_path_factory.mktemp('evaluator')
  start = time.perf_counter()
  summary = evaluator_trainer.train_evaluator(config, workdir, log=lambda msg: None)
  return summary, time.perf_counter() - start


def test_evaluator_trains_and_ranks_matched_pairs_first(trained_evaluator):
  summary, seconds = trained_evaluator
  assert seconds < 90, f'training the tiny evaluator took {seconds:.0f} s (about 35 s on 2 cores)'
  loaded = evaluator_files.load(summary['workdir'])  # The workdir finds its evaluator/ export.
  assert loaded.tokenizer.startswith('sentencepiece:') and loaded.model.mask_text_padding
  # Retrieval on the training split's original (unmirrored) clips, eval mode.
  clips = ground_truth.load_clips(summary['dataset_dir'], 'train', max_frames=32)
  motion, text = loaded.embed_motions(clips.features, clips.mask), loaded.embed_texts(clips.texts)
  scores = evaluator_trainer.retrieval_scores(motion, text, pool_size=32)
  n = len(clips)
  assert scores['pool'] == n == 21
  print(f'\nevaluator after {summary["step"]} steps ({seconds:.1f} s): train top-1 '
        f'{scores["top1"]:.3f} top-5 {scores["top5"]:.3f} (chance {1 / n:.3f} / {5 / n:.3f}); '
        f'val {summary["val"]}')
  # Measured (seed 0, 2 CPU cores): top-1 6/21 = 0.29, top-5 16/21 = 0.76; chance 1/21, 5/21.
  assert scores['top1'] >= 3.0 / n and scores['top5'] >= 2 * 5.0 / n
  similarity = text @ motion.T
  matched = np.mean(np.diag(similarity))
  mismatched = np.mean(similarity[~np.eye(n, dtype=bool)])
  assert matched > mismatched
  # The exported weights embed exactly as the trainer's final validation did.
  val = ground_truth.load_clips(summary['dataset_dir'], 'val', max_frames=32)
  again = evaluator_trainer.retrieval_scores(loaded.embed_motions(val.features, val.mask),
                                             loaded.embed_texts(val.texts), pool_size=32)
  assert again['top1'] == pytest.approx(summary['val']['top1'])
  assert again['loss'] == pytest.approx(summary['val']['loss'], rel=1e-4)


def test_ground_truth_against_itself(trained_evaluator):
  summary, _ = trained_evaluator
  loaded = evaluator_files.load(summary['export'])
  clips = ground_truth.load_clips(summary['dataset_dir'], 'train', max_frames=32)
  reference = runner.make_reference(clips, loaded, mm_texts=4, mm_samples=3)
  gt_row = runner.ground_truth_row(reference, replications=3)
  # The ground truth handed in as if a run had generated it.
  as_run = generated.Motions.from_padded(clips.features.copy(), clips.lengths)
  rows = [runner.score_motions(reference, as_run, r) for r in range(3)]
  for r, scores in enumerate(rows):
    assert abs(scores['fid']) < 1e-4
    for k in (1, 2, 3):
      assert scores[f'r_precision_top{k}'] == gt_row[f'r_precision_top{k}']['values'][r]
    assert scores['mm_dist'] == pytest.approx(gt_row['mm_dist']['values'][r])
    assert scores['diversity'] == pytest.approx(gt_row['diversity']['values'][r])
    assert scores['contact_recall'] in (1.0,) or np.isnan(scores['contact_recall'])
  assert abs(gt_row['fid']['mean']) < 1e-4
  assert gt_row['r_precision_top3']['mean'] >= gt_row['r_precision_top1']['mean'] > 1 / len(clips)


def test_sampler_matches_generate(trained_run):
  """Per-row lengths aside, the evaluation's samples are the sample command's."""
  _, workdir, _ = trained_run
  run = generated.load_run(workdir, 'run', ddim_steps=2)
  sampler = generated.Sampler(run, batch_size=2)
  clips = ground_truth.load_clips(run.artifacts.dataset_dir, 'test', max_frames=12)
  n = len(clips)  # Short texts: generate() refuses texts longer than max_text_len.
  clips = dataclasses.replace(clips, texts=('Two people hug.',) * n,
                              person1=('The person hugs.',) * n, person2=('It hugs back.',) * n)
  ids = [0, 3]
  ours = sampler.sample(clips, [0, 1], ids, seed=5)
  prompts = [generation.Prompt(clips.texts[i], clips.person1[i], clips.person2[i], 'given')
             for i in (0, 1)]
  sample_fn = sampler._sample  # pylint: disable=protected-access
  theirs = generation.generate(sample_fn, run.params, run.artifacts, prompts, length=12,
                               max_len=run.max_len, max_text_len=run.config.data.max_text_len,
                               seed=5, sample_ids=[(int(clips.indices[i]), j)
                                                   for i, j in zip((0, 1), ids)])
  features, _ = ours.padded(12)
  np.testing.assert_allclose(features, theirs.transpose(0, 2, 1, 3), atol=1e-5)


def _main(capsys, *args):
  code = evaluate.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return code, out, err


def test_evaluate_quick_end_to_end_then_from_the_cache(trained_run, trained_evaluator, tmp_path,
                                                       capsys):
  _, workdir, _ = trained_run
  summary, _ = trained_evaluator
  out = tmp_path / 'eval'
  args = ['--workdir', workdir, '--evaluator', summary['export'], '--out_dir', out, '--quick',
          '--mm_texts', 3, '--mm_samples', 3, '--ddim_steps', 3]
  code, printed, err = _main(capsys, *args)
  assert code == 0, err
  results = json.loads((out / 'metrics.json').read_text())
  name = workdir.name
  assert list(results['rows']) == ['ground truth', name]
  assert results['dataset']['split'] == 'test' and results['dataset']['num_clips'] == 3
  assert results['settings']['replications'] == 2 and results['settings']['quick']
  assert results['evaluator']['tokenizer'].startswith('sentencepiece:')
  run_row = results['rows'][name]
  assert run_row['run']['checkpoint_step'] == 6 and run_row['run']['ddim_steps'] == 3
  assert run_row['generated_motions'] == 2 * 3 + 2 * 3 * 3
  assert run_row['has_distance_predictor']  # The tiny default is FineDual.
  keys = EMBEDDING_KEYS | POSITION_KEYS | {'multimodality', 'contact_precision',
                                           'contact_recall', 'contact_f1',
                                           'distance_prediction_error',
                                           'distance_prediction_error_t100'}
  assert keys <= set(run_row['metrics'])
  assert EMBEDDING_KEYS | POSITION_KEYS <= set(results['rows']['ground truth']['metrics'])
  for key in EMBEDDING_KEYS | {'multimodality', 'distance_prediction_error'}:
    summary_ = run_row['metrics'][key]
    assert len(summary_['values']) == 2 and summary_['mean'] is not None
    assert summary_['interval'] >= 0
  assert results['protocol']['deviations']  # 3 clips: the pool is not 96.
  table = (out / 'metrics.md').read_text()
  assert '| ground truth |' in table and f'| {name} |' in table and ' ± ' in table
  assert (out / 'metrics.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert 'replication 1' in printed and 'generated 24 motions' in printed, printed

  cache = out / 'cache' / name
  files = sorted(p.name for p in cache.iterdir())
  assert files == ['mm_rep_0.npz', 'mm_rep_1.npz', 'rep_0.npz', 'rep_1.npz']
  mtimes = {f: (cache / f).stat().st_mtime_ns for f in files}
  (cache / 'rep_1.npz').unlink()  # As if interrupted while generating replication 1.
  code, printed, err = _main(capsys, *args)
  assert code == 0, err
  again = json.loads((out / 'metrics.json').read_text())
  assert again['rows'][name]['generated_motions'] == 3  # Only the missing replication.
  assert {f: (cache / f).stat().st_mtime_ns for f in files if f != 'rep_1.npz'} == {
      f: t for f, t in mtimes.items() if f != 'rep_1.npz'}
  assert again['rows'] == results['rows'] | {name: dict(results['rows'][name],
                                                        generated_motions=3)}


def _tiny_evaluator_folder(path, summary, **overrides):
  """A valid export with other model fields (random weights), for the compatibility errors."""
  record = json.loads((pathlib.Path(summary['export']) / 'config.json').read_text())
  fields = dict(record['model'], **overrides)
  model = ev.InterCLIP(**fields)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 2, 2, fields['feature_dim'])),
                               jnp.ones((1, 2)),
                               jnp.zeros((1, fields['context_length']), jnp.int32))['params']
  convert_interclip.save_converted(params, fields, path, tokenizer=record['tokenizer'])
  (path / 'spm.model').write_bytes((pathlib.Path(summary['export']) / 'spm.model').read_bytes())
  return path


def test_bad_inputs_have_clear_messages(trained_run, trained_evaluator, tmp_path, capsys):
  _, workdir, _ = trained_run
  summary, _ = trained_evaluator
  good = summary['export']
  base = ['--quick', '--out_dir', tmp_path / 'out']

  missing = tmp_path / 'no_evaluator'
  code, _, err = _main(capsys, '--workdir', workdir, '--evaluator', missing, *base)
  assert code == 2 and err.startswith('error: ') and str(missing) in err

  broken = tmp_path / 'broken'
  broken.mkdir()
  (broken / 'params.msgpack').write_bytes(b'not msgpack')
  (broken / 'config.json').write_text('{"model": {"no_such_field": 1}}')
  code, _, err = _main(capsys, '--workdir', workdir, '--evaluator', broken, *base)
  assert code == 2 and str(broken) in err and 'Traceback' not in err

  untagged = tmp_path / 'untagged'
  record = json.loads((pathlib.Path(good) / 'config.json').read_text())
  untagged.mkdir()
  (untagged / 'params.msgpack').write_bytes((pathlib.Path(good) / 'params.msgpack').read_bytes())
  (untagged / 'config.json').write_text(json.dumps({'model': record['model']}))
  code, _, err = _main(capsys, '--workdir', workdir, '--evaluator', untagged, *base)
  assert code == 2 and '--evaluator_tokenizer' in err and str(untagged) in err

  empty_run = tmp_path / 'not_trained'
  empty_run.mkdir()
  code, _, err = _main(capsys, '--workdir', empty_run, '--evaluator', good, *base)
  assert code == 2 and 'no checkpoint' in err and str(empty_run) in err

  code, _, err = _main(capsys, '--workdir', workdir, '--evaluator', good, '--split', 'holdout',
                       *base)
  assert code == 2 and "no split 'holdout'" in err and summary['dataset_dir'] in err

  not_a_dataset = tmp_path / 'not_a_dataset'
  not_a_dataset.mkdir()
  code, _, err = _main(capsys, '--workdir', workdir, '--evaluator', good, '--dataset_dir',
                       not_a_dataset, *base)
  assert code == 2 and str(not_a_dataset) in err

  rotations = _tiny_evaluator_folder(tmp_path / 'rotations', summary, feature_dim=138)
  code, _, err = _main(capsys, '--workdir', workdir, '--evaluator', rotations, *base)
  assert code == 2 and 'positions representation (262-d features)' in err
  assert str(workdir) in err and '138-d' in err

  # The command line itself: a message, no traceback.
  result = subprocess.run([sys.executable, '-m', 'finedual_jax.evaluate', '--workdir',
                           str(workdir), '--evaluator', str(missing)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert f'evaluator {missing} does not exist' in result.stderr


def test_evaluator_tokenizer_spec(tmp_path, trained_evaluator):
  summary, _ = trained_evaluator
  with pytest.raises(ValueError, match='not of the form'):
    evaluator_files.load(summary['export'], tokenizer='bpe:/x')
  with pytest.raises(FileNotFoundError, match='merges.txt.gz'):
    evaluator_files.load(summary['export'], tokenizer=f'clip:{tmp_path / "merges.txt.gz"}')
  merges = tmp_path / 'merges.txt.gz'
  with gzip.open(merges, 'wt', encoding='utf-8') as f:
    f.write('#version: 0.2\nh e\n')
  with pytest.raises(ValueError, match='does not fit the model'):  # 515 CLIP ids, SP model.
    evaluator_files.load(summary['export'], tokenizer=f'clip:{merges}')


def test_protocol_sizes():
  full = runner.Protocol.for_sizes(1098, 30)  # InterHuman's test split.
  assert (full.pool_size, full.diversity_times, full.mm_times, full.deviations) == (96, 300, 10,
                                                                                    ())
  small = runner.Protocol.for_sizes(21, 6)
  assert (small.pool_size, small.diversity_times, small.mm_times) == (21, 20, 5)
  assert len(small.deviations) == 3


def test_cache_round_trip_and_fingerprint(tmp_path):
  cache = generated.Cache(tmp_path / 'cache' / 'run')
  rng = np.random.default_rng(0)
  motions = generated.Motions(rng.normal(size=(7, 2, 262)).astype(np.float32),
                              np.array([3, 4], np.int32))
  fingerprint = {'seed': 1, 'ddim_steps': 50, 'clips': 'abc'}
  path = cache.save('rep_1', fingerprint, motions)
  assert path == tmp_path / 'cache' / 'run' / 'rep_1.npz'
  assert sorted(p.name for p in path.parent.iterdir()) == ['rep_1.npz']  # No temporary left.
  loaded = cache.load('rep_1', dict(fingerprint))
  np.testing.assert_array_equal(loaded.rows, motions.rows)
  np.testing.assert_array_equal(loaded.lengths, motions.lengths)
  assert cache.load('rep_1', dict(fingerprint, ddim_steps=10)) is None  # Other settings.
  assert cache.load('rep_2', fingerprint) is None
  padded, mask = loaded.padded(5)
  assert padded.shape == (2, 5, 2, 262) and mask.sum(axis=1).tolist() == [3, 4]
  np.testing.assert_array_equal(padded[1, :4], motions.rows[3:])
  assert not padded[0, 3:].any()
  half = cache.load('rep_1', fingerprint) if cache.save('rep_1', fingerprint, motions,
                                                        'float16') else None
  assert half.rows.dtype == np.float32
  np.testing.assert_allclose(half.rows, motions.rows, atol=5e-3)


def test_interclip_size_is_the_official_network():
  config = evaluator_config.get_config()  # size=interclip
  official = ev.InterCLIP()  # Its defaults are InterCLIP's sizes.
  for field, value in config.model.items():
    assert value == getattr(official, field), field
  tiny = evaluator_config.get_config('size=tiny')
  assert tiny.data.max_len < tiny.model.max_positions


def test_train_evaluator_command_rejects_a_missing_data_set(tmp_path):
  missing = tmp_path / 'no_data'
  result = subprocess.run([sys.executable, '-m', 'finedual_jax.train_evaluator', '--dataset_dir',
                           str(missing), '--workdir', str(tmp_path / 'out'), '--config',
                           'experiments/evaluator.py:size=tiny'], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert str(missing) in result.stderr
