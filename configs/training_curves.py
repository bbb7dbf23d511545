"""C12 settings: training curves of NGD, K-FAC, GD and Adam."""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.classes = (4, 9)
  c.n_train = 256
  c.pca_dim = 32  # inputs projected onto this many singular vectors
  c.widths = (512, 2048, 8192)  # >= n_train: K-FAC's P_S = I
  c.nu = 1.0
  c.ngd_lr = 1.0
  c.ngd_damping = 0.0
  c.kfac_scale = 1.0  # kfac: eta = this / (n max_i h_i)
  c.kfac_factor_damping = 1e-10  # added to both factors: Cholesky solves
  c.kfac_forster_scale = 1.0  # kfac_forster: eta = this / d
  c.gd_scales = (1.0, 1.9)  # gd: eta = s / lambda_max(G(0))
  c.adam_lrs = (1e-3, 1e-2, 1e-1)
  c.curvature_steps = 40  # budget of ngd, kfac, kfac_forster
  c.first_order_steps = 1000  # budget of gd, adam
  c.target_fraction = 1e-4  # "small loss": L <= this L(0)
  c.stop_fraction = 1e-14  # a run stops below this L(0)
  c.speedup = 10.0  # fast methods need <= 1/speedup of the baselines' steps
  return with_preset(
      c, preset,
      small=dict(widths=(512, 2048), curvature_steps=20, first_order_steps=200))
