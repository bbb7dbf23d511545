"""The fields of the NGD training runs C1-C4 share
(``experiments/ngd_training.py``)."""

import ml_collections


def base(n: int, reps: int, num_steps: int) -> ml_collections.ConfigDict:
  """Data on the sphere, the two-layer ReLU net and the NGD run."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n = n  # training points on S^{d-1}
  c.d = 10
  c.nu = 1.0  # first-layer init scale
  c.reps = reps  # initialisations per width (shared by every eta)
  c.num_steps = num_steps
  c.residual_floor = 1e-10  # stop once ||r(k)|| / ||r(0)|| is this small
  return c
