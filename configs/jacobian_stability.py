"""C4 settings: the Jacobian's change during NGD training (Lemma 7)."""

import ml_collections

from configs import ngd_training
from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  # seed, n, d = 10, nu = 1, reps, num_steps, residual_floor = 1e-10.
  c = ngd_training.base(n=32, reps=3, num_steps=10)
  c.widths = (16, 64, 256, 1024, 4096, 16384)
  c.learning_rate = 0.5
  c.delta = 0.1  # Lemma 7's failure probability
  return with_preset(
      c, preset,
      small=dict(n=16, widths=(16, 64, 256, 1024, 4096), reps=2, num_steps=8))
