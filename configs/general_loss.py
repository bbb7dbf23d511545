"""C2: NGD with the squared-log-cosh loss vs ``1 - 2 eta mu L / (mu + L)``.

Small preset (about 18 s on 2 CPU cores; n = 16, widths 8 .. 4096,
eta = f * 2/(mu + L) for f in {0.25, 0.5, 0.9}, 1 initialisation)::

  python -m experiments.general_loss --config=configs/general_loss.py:small \
      --workdir=/tmp/ngdjax/C2_small

Full run (about 4-5 min on 2 CPU cores, most of it the power iterations
for ``||J(k) - J(0)||_2`` at m = 16384; n = 32, widths 8 .. 16384, 2
initialisations)::

  python -m experiments.general_loss --config=configs/general_loss.py \
      --workdir=/tmp/ngdjax/C2

Expected result (measured, small / full; loss ``squared_log_cosh(1)``,
``mu = 1``, ``L = 2``, bound ``1 - (4/3) eta``): every per-step ratio within
the bound from ``m* = 64`` on, for all three step sizes; at the widest width
the largest ratios are 0.549 / 0.564 (eta = 1/6, bound 0.778), 0.238 / 0.256
(eta = 1/3, bound 0.556) and 0.040 / 0.040 (eta = 0.6, bound 0.2; 0.04 is
``(1 - 2 eta)^2``, the linearised step on small residuals where ``l'(e)/e``
is near ``L``). m = 8 breaks the bound at every eta (up to 0.997 and 1.0 on
the full run, where NGD stalls on a singular Gram). Measured ``C`` stays
above the theorem's range at every width (1.1-1.4 at the widest), so
Theorem 2's hypotheses hold in no run. Figures ``ratio_vs_width.png`` and
``residuals.png``.
"""

from ngdjax.experiment import general_loss


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = general_loss.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.n = 8
    config.widths = (8, 64, 512, 4096, 524288)
    config.eta_fractions = (0.1, 0.5, 0.9)
    config.reps = 1
    config.num_steps = 8
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
