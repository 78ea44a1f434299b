"""InterGen baseline: ``experiments/intergen.py:size=paper,dataset=interhuman``.

The cooperative denoiser conditioned on the overall caption only (paper: 8 layers, 1024 wide,
8 heads, FFN 2048); FineDual's auxiliary losses are off.
"""

from __future__ import annotations

from experiments import baseline_common


def get_config(arg: str | None = None):
  return baseline_common.baseline_config('intergen', arg)
