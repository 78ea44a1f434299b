"""Prints the parameter count of every experiment at every size: ``python -m experiments.param_counts``.

Counts come from shapes only (nothing is allocated), with a 1,000-piece vocabulary.
"""

from __future__ import annotations

import importlib

from experiments import base
from finedual_jax.models import factory

EXPERIMENTS = ('finedual', 'finedual_no_alignment', 'finedual_no_distance', 'finedual_no_graph',
               'finedual_no_refinement', 'intergen', 'in2in')


def counts(vocab_size: int = 1000) -> dict[tuple[str, str], int]:
  """(experiment, size) -> number of parameters."""
  out = {}
  for name in EXPERIMENTS:
    module = importlib.import_module(f'experiments.{name}')
    for size in base.SIZES:
      config = module.get_config(f'size={size}')
      model = factory.build_model(config.model, vocab_size=vocab_size,
                                  max_text_len=config.data.max_text_len)
      out[name, size] = factory.count_parameters(model, max_len=config.data.max_len,
                                                 max_text_len=config.data.max_text_len)
  return out


def main() -> None:
  table = counts()
  print(f'{"experiment":<26}' + ''.join(f'{size:>14}' for size in base.SIZES))
  for name in EXPERIMENTS:
    print(f'{name:<26}' + ''.join(f'{table[name, size]:>14,}' for size in base.SIZES))


if __name__ == '__main__':
  main()
