"""The embedded default: a small FineDual on the synthetic data set, minutes on a laptop CPU.

    python -m finedual_jax.train                                  # this config, ./finedual_run
    python -m finedual_jax.train --config experiments/default.py:size=tiny --workdir /tmp/run

Sized so that the sampled interaction is recognisable (hands meet in a handshake, both bend in
a bow, gaits in a side-by-side walk) after 1,500 steps of batch 16 on 3-second windows: about
13-15 minutes end to end on a 2-core CPU (about 2 steps/s), less with more cores. Variants:
``size=small`` (default) or ``size=tiny`` (seconds, for tests and smoke runs).
"""

from __future__ import annotations

from experiments import base
from experiments import finedual


def get_config(arg: str | None = None):
  variant = base.parse_variant(arg, {'size': 'small'}, {'size': ('small', 'tiny')})
  return finedual.get_config(f'size={variant["size"]},dataset=synthetic')
