"""C8 settings: lambda_0 against n."""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.d = 10
  c.ns = tuple(2**k for k in range(4, 12))  # 16 .. 2048
  c.reps = 5  # independent samples of the points per n (>= 4)
  c.max_beta = 0.5  # lambda_0 >= C n^(-beta) with beta < this
  return with_preset(c, preset, small=dict(ns=(16, 32, 64, 128, 256), reps=4))
