"""in2IN-style baseline: ``experiments/in2in.py:size=paper,dataset=interhuman``.

Individual texts condition self-attention and FFN, the overall caption the cross-attention.
"""

from __future__ import annotations

from experiments import baseline_common


def get_config(arg: str | None = None):
  return baseline_common.baseline_config('in2in', arg)
