"""C1: NGD's per-step contraction ``||r(k+1)||^2 / ||r(k)||^2`` vs ``1 - eta``.

Small preset (about 17 s on 2 CPU cores; n = 16, widths 8 .. 4096, eta in
{0.25, 0.5, 1}, 1 initialisation)::

  python -m experiments.ngd_rate --config=configs/ngd_rate.py:small \
      --workdir=/tmp/ngdjax/C1_small

Full run (about 4 min on 2 CPU cores, most of it the power iterations for
``||J(k) - J(0)||_2`` at m = 16384; n = 32, widths 8 .. 16384, 2
initialisations)::

  python -m experiments.ngd_rate --config=configs/ngd_rate.py \
      --workdir=/tmp/ngdjax/C1

Expected result (measured, small / full): every per-step ratio within
``1 - eta`` from ``m* = 64`` on for eta = 0.25 and 0.5, the ratios sitting
near ``(1 - eta)^2`` (max 0.566 / 0.564 at eta = 0.25, 0.258 / 0.254 at
eta = 0.5 at the widest width); the narrow nets break the bound (m = 8:
0.75 / 0.93 at eta = 0.25; full also m = 16: 0.756 at eta = 0.25, 0.566 at
eta = 0.5), and at m = 8 an example's activations all die, G(k) turns
singular and NGD stalls. The measured Condition 2 constant ``C`` stays
above 1/2 at every width (1.15-1.5 at the widest, falling roughly like
``m^(-0.3)``), so Theorem 1's hypotheses hold in no run: its rate is seen
well outside the regime it was proved for. At ``eta = 1`` the first-step
ratio falls like ``m^(-0.90 +- 0.02)`` / ``m^(-0.95 +- 0.03)`` (0.0013 at
m = 4096, 0.00035 at m = 16384). Figures ``ratio_vs_width.png``,
``eta1_first_step.png``, ``residuals.png``, ``condition2.png``.
"""

from ngdjax.experiment import ngd_rate


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = ngd_rate.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.n = 8
    config.widths = (8, 64, 512, 4096, 262144)
    config.reps = 1
    config.num_steps = 8
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
