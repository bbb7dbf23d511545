"""C10 settings: linearised GD and NGD reach the minimum-norm solution
(Theorem 7).
"""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n = 32  # training points on S^{d-1}
  c.d = 10
  c.width = 4096  # hidden units m; p = m d weights
  c.nu = 1.0  # first-layer init scale
  c.num_times = 80  # points of each trajectory
  c.decay = 1e-12  # trajectories run until the slowest GD mode is this small
  c.gd_lr = 1.0  # GD steps: eta = gd_lr / lambda_max(G), needs < 2
  c.ngd_lr = 0.5  # NGD steps, in (0, 2)
  c.explicit_steps = 20  # explicit iterations checked against the closed form
  c.roundoff_factor = 1e3  # tol = roundoff_factor * eps * cond(G)
  c.min_path_gap = 1e-3  # GD's path must stray this far from NGD's
  c.real_steps = 3  # exact NGD steps of the real network (the extra)
  c.real_lr = 1.0
  return with_preset(c, preset, small=dict(n=16, width=1024, num_times=60))
