"""C6 settings: K-FAC's rate against cond(X^T X), and after the Forster
transform (Theorems 4-5).
"""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n = 64  # training points
  c.d = 8  # input dimension (n > d: X^T X is invertible)
  c.width = 65536  # hidden units m (>= n, so P_S = I; module docstring)
  c.nu = 1.0  # first-layer init scale
  c.conds = (1.0, 10.0, 100.0, 1000.0, 10000.0)  # prescribed cond(X^T X)
  c.steps = 20  # K-FAC steps per sweep and cond
  c.fixed_eta_times_d = 0.5  # fixed sweep: eta = this / d
  c.residual_floor = 1e-8  # rates count steps while ||r|| > this ||r(0)||
  c.diverge_factor = 1e6  # ... and while ||r|| <= this ||r(0)||
  c.bound_rtol = 0.1  # theorem_bound: 1 - ratio >= (1 - this)(1 - bound)
  c.max_second_order = 0.1  # Theorem 4's hypothesis: ||(2)|| <= this ||(1)||
  c.rate_tol = 0.02  # leverage_prediction: |measured - predicted| rate
  c.monotone_tol = 0.01  # degrades: rate(kappa') >= rate(kappa) - this
  c.min_rise = 0.5  # degrades: rate(max kappa) - rate(min kappa) >= this
  c.one_step_tol = 0.1  # forster_one_step: ||r(1)|| / ||r(0)|| <= this
  c.match_tol = 0.1  # equals_ngd: ||u_kfac(1) - u_ngd(1)|| / ||r(0)||
  c.first_order_tol = 1e-6  # equals_ngd: ||J dth_kfac - J dth_ngd|| / ||r0||
  return with_preset(c, preset, small=dict(n=32, width=32768, steps=15))
