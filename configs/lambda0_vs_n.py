"""C8 settings: lambda_0 against n.

The values of the full run, then the presets (``small``, ``full``) that change
some of them; ``experiments/lambda0_vs_n.py`` measures and judges. Run from the
repository root::

  python -m experiments.lambda0_vs_n \
      --config=configs/lambda0_vs_n.py:small \
      --workdir=/tmp/ngdjax/C8_small

Any field can be changed on the command line, e.g. ``--config.seed=1``.
"""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  """The config of ``preset``: the full run's values, then its changes."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.d = 10
  c.ns = tuple(2**k for k in range(4, 12))  # 16 .. 2048
  c.reps = 5  # independent samples of the points per n (>= 4)
  c.max_beta = 0.5  # lambda_0 >= C n^(-beta) with beta < this
  return with_preset(c, preset, small=dict(ns=(16, 32, 64, 128, 256), reps=4))
