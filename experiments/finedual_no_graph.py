"""FineDual ablation `no_graph`: ``experiments/finedual_no_graph.py:size=paper,dataset=interhuman``."""

from __future__ import annotations

from experiments import finedual


def get_config(arg: str | None = None):
  return finedual.get_config(','.join(filter(None, [arg, 'ablation=no_graph'])))
