"""C1 settings: NGD's rate on the squared loss (Theorem 1).

The values of the full run, then the presets (``small``, ``full``) that change
some of them; ``experiments/ngd_rate.py`` measures and judges. Run from the
repository root::

  python -m experiments.ngd_rate \
      --config=configs/ngd_rate.py:small \
      --workdir=/tmp/ngdjax/C1_small

Any field can be changed on the command line, e.g. ``--config.seed=1``.
"""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  """The config of ``preset``: the full run's values, then its changes."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n = 16  # training points on S^{d-1}
  c.d = 10
  c.nu = 1.0  # first-layer init scale
  c.reps = 2  # initialisations per width (shared by every eta)
  c.num_steps = 8
  c.residual_floor = 1e-10  # stop once ||r(k)|| / ||r(0)|| is this small
  # From a narrow net (p = m d barely above n) to ones wide enough that
  # the measured Condition 2 constant is below 1/2 (m >= 2^18 at n = 16).
  c.widths = (8, 16, 64, 256, 1024, 4096, 16384, 262144, 1048576)
  # 0.1 and 0.25 lie within Theorem 1's step limit where C < 0.28.
  c.learning_rates = (0.1, 0.25, 0.5, 1.0)
  c.ratio_rtol = 1e-9  # round-off allowance on ratio <= 1 - eta
  return with_preset(
      c, preset,
      small=dict(n=8, widths=(8, 64, 512, 4096, 262144), reps=1, num_steps=8))
