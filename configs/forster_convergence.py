"""C7 settings: the Forster transform: Algorithm 1 against Newton's method."""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n = 1000  # rows
  c.d = 20  # columns
  # Data kinds, see make_data in experiments/forster_convergence.py.
  c.kinds = ("gaussian", "anisotropic", "near_degenerate", "near_critical")
  c.anisotropy = 1e4  # anisotropic: column scales span this factor
  c.degenerate_noise = 1e-3  # near_degenerate: distance from the subspace
  c.critical_fraction = 0.96  # near_critical: rows in the plane / (2 n / d)
  c.tol = 1e-10  # target error (float64)
  c.max_iters = 2000  # updates allowed to either method
  c.repeats = 9  # timed calls per method (median reported)
  return with_preset(c, preset, small=dict(n=500, d=10, repeats=5))
