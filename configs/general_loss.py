"""C2 settings: NGD with a strongly convex, smooth loss (Theorem 2)."""

import ml_collections

from configs import ngd_training
from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  # seed, n, d = 10, nu = 1, reps, num_steps, residual_floor = 1e-10.
  c = ngd_training.base(n=8, reps=2, num_steps=8)
  # Up to widths where the measured C < 1/3 (Theorem 2 at kappa = 2).
  c.widths = (8, 64, 512, 4096, 16384, 262144, 1048576)
  c.alpha = 1.0  # squared_log_cosh(alpha): mu = 1, L = 1 + alpha
  # eta = f * 2 / (mu + L): Theorem 2's step limit as C -> 0 is f < 1;
  # at C ~ 0.25 it is f < 0.17, hence f = 0.1.
  c.eta_fractions = (0.1, 0.25, 0.5, 0.9)
  c.ratio_rtol = 1e-9  # round-off allowance on ratio <= bound
  return with_preset(
      c, preset,
      small=dict(n=8, widths=(8, 64, 512, 4096, 524288),
                 eta_fractions=(0.1, 0.5, 0.9), reps=1, num_steps=8))
