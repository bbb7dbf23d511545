"""C2 settings: NGD with a strongly convex, smooth loss (Theorem 2).

The values of the full run, then the presets (``small``, ``full``) that change
some of them; ``experiments/general_loss.py`` measures and judges. Run from the
repository root::

  python -m experiments.general_loss \
      --config=configs/general_loss.py:small \
      --workdir=/tmp/ngdjax/C2_small

Any field can be changed on the command line, e.g. ``--config.seed=1``.
"""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  """The config of ``preset``: the full run's values, then its changes."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n = 8  # training points on S^{d-1}
  c.d = 10
  c.nu = 1.0  # first-layer init scale
  c.reps = 2  # initialisations per width (shared by every eta)
  c.num_steps = 8
  c.residual_floor = 1e-10  # stop once ||r(k)|| / ||r(0)|| is this small
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
