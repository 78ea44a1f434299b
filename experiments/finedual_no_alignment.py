"""FineDual ablation `no_alignment`: ``experiments/finedual_no_alignment.py:size=paper,dataset=interhuman``."""

from __future__ import annotations

from experiments import finedual


def get_config(arg: str | None = None):
  return finedual.get_config(','.join(filter(None, [arg, 'ablation=no_alignment'])))
