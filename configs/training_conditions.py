"""C3 settings: the conditions of Theorem 1's proof along training."""

import ml_collections

from configs import ngd_training
from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  # seed, n, d = 10, nu = 1, reps, num_steps, residual_floor = 1e-10.
  c = ngd_training.base(n=32, reps=3, num_steps=40)
  c.widths = (8, 16, 64, 256, 1024, 4096, 16384)
  c.learning_rate = 0.5
  c.lambda_fraction = 4 / 9  # Lemma 2
  c.distance_factor = 3.0  # Lemma 3: R = factor ||y - u(0)|| / sqrt(lam)
  c.delta = 0.1  # failure probability in the Lemma 7-8 flip bound
  return with_preset(
      c, preset,
      small=dict(n=16, widths=(8, 32, 128, 512, 4096), reps=2, num_steps=20))
