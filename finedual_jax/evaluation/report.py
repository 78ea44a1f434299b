"""Writes an evaluation's results: ``metrics.json``, a Markdown table and a bar plot."""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position

# Display name and which way is better ('up', 'down', or 'real': closer to the ground truth).
METRICS = {
    'r_precision_top1': ('R-Prec. top-1', 'up'),
    'r_precision_top2': ('R-Prec. top-2', 'up'),
    'r_precision_top3': ('R-Prec. top-3', 'up'),
    'fid': ('FID', 'down'),
    'mm_dist': ('MM Dist', 'down'),
    'diversity': ('Diversity', 'real'),
    'multimodality': ('MModality', 'up'),
    'penetration_rate': ('Penetration rate', 'down'),
    'penetration_depth': ('Penetration depth (m)', 'down'),
    'foot_skating': ('Foot skating', 'down'),
    'contact_precision': ('Contact precision', 'up'),
    'contact_recall': ('Contact recall', 'up'),
    'contact_f1': ('Contact F1', 'up'),
    'distance_prediction_error': ('Dist. pred. error (m)', 'down'),
}
_ARROWS = {'up': '↑', 'down': '↓', 'real': '→'}


def _write_text(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(text, encoding='utf-8')
  os.replace(tmp, path)


def shown_metrics(results: dict[str, Any]) -> list[str]:
  """The table's columns: the known metrics some row has, in ``METRICS`` order."""
  present = {k for row in results['rows'].values() for k in row['metrics']}
  return [k for k in METRICS if k in present]


def cell(summary: dict[str, Any] | None) -> str:
  if not summary or summary.get('mean') is None:
    return '–'
  mean = summary['mean'] if abs(summary['mean']) >= 5e-4 else 0.0  # No '-0.000'.
  return f'{mean:.3f} ± {summary["interval"]:.3f}'


def markdown(results: dict[str, Any]) -> str:
  columns = shown_metrics(results)
  header = ['', *(f'{METRICS[c][0]} {_ARROWS[METRICS[c][1]]}' for c in columns)]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name, row in results['rows'].items():
    lines.append('| ' + ' | '.join([name, *(cell(row['metrics'].get(c)) for c in columns)])
                 + ' |')
  data = results['dataset']
  settings = results['settings']
  notes = [
      f'Mean ± 95% interval over {settings["replications"]} replications '
      f'(MModality over {settings["mm_replications"]}), on {data["num_clips"]} clips of '
      f'{data["dir"]} (split {data["split"]!r}, {data["caption"]}, at most '
      f'{data["max_frames"]} frames).',
      f'Evaluator: {results["evaluator"]["path"]} ({results["evaluator"]["tokenizer"]}).',
      '→: closest to the ground truth is best; –: not applicable or undefined.']
  for name, row in results['rows'].items():
    if 'run' in row:
      run = row['run']
      notes.append(f'{name}: {run["workdir"]} step {run["checkpoint_step"]} ({run["model"]}, '
                   f'{run["weights"]} weights, DDIM {run["ddim_steps"]}, guidance '
                   f'{run["guidance_overall"]} / {run["guidance_individual"]}).')
  for deviation in results['protocol']['deviations']:
    notes.append(f'Not the published protocol: {deviation}.')
  return '\n'.join(lines) + '\n\n' + '\n'.join(f'- {n}' for n in notes) + '\n'


def plot(results: dict[str, Any], path: pathlib.Path) -> None:
  columns = shown_metrics(results)
  names = list(results['rows'])
  cols = 4
  rows = max(1, math.ceil(len(columns) / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
  colours = plt.get_cmap('tab10')
  for ax, column in zip(axes.ravel(), columns):
    means, errors = [], []
    for name in names:
      summary = results['rows'][name]['metrics'].get(column) or {}
      means.append(summary.get('mean') if summary.get('mean') is not None else math.nan)
      errors.append(summary.get('interval') or 0.0)
    ax.bar(range(len(names)), means, yerr=errors, capsize=3,
           color=[colours(i % 10) for i in range(len(names))])
    ax.set_title(f'{METRICS[column][0]} {_ARROWS[METRICS[column][1]]}', fontsize=9)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha='right', fontsize=7)
    ax.tick_params(axis='y', labelsize=7)
  for ax in axes.ravel()[len(columns):]:
    ax.axis('off')
  fig.tight_layout()
  tmp = path.with_name(path.name + '.tmp.png')
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, path)


def write(results: dict[str, Any], out_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """Writes the three files (each atomically); returns their paths."""
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {'json': out_dir / 'metrics.json', 'markdown': out_dir / 'metrics.md',
           'plot': out_dir / 'metrics.png'}
  _write_text(paths['json'], json.dumps(results, indent=2, allow_nan=False))
  _write_text(paths['markdown'], markdown(results))
  plot(results, paths['plot'])
  return paths
