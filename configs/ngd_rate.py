"""C1 settings: NGD's rate on the squared loss (Theorem 1)."""

import ml_collections

from configs import ngd_training
from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  # seed, n, d = 10, nu = 1, reps, num_steps, residual_floor = 1e-10.
  c = ngd_training.base(n=16, reps=2, num_steps=8)
  # From a narrow net (p = m d barely above n) to ones wide enough that
  # the measured Condition 2 constant is below 1/2 (m >= 2^18 at n = 16).
  c.widths = (8, 16, 64, 256, 1024, 4096, 16384, 262144, 1048576)
  # 0.1 and 0.25 lie within Theorem 1's step limit where C < 0.28.
  c.learning_rates = (0.1, 0.25, 0.5, 1.0)
  c.ratio_rtol = 1e-9  # round-off allowance on ratio <= 1 - eta
  return with_preset(
      c, preset,
      small=dict(n=8, widths=(8, 64, 512, 4096, 262144), reps=1, num_steps=8))
