"""C1: NGD's per-step contraction ``||r(k+1)||^2 / ||r(k)||^2`` vs ``1 - eta``.

Small preset (about 25 s on 2 CPU cores; n = 8, widths 8 .. 262144, eta in
{0.1, 0.25, 0.5, 1}, 1 initialisation)::

  python -m experiments.ngd_rate --config=configs/ngd_rate.py:small \
      --workdir=/tmp/ngdjax/C1_small

Full run (10 min on 2 CPU cores shared at load ~12, estimated 4 min
alone, most of it m = 2^20; n = 16, widths 8 .. 1048576, 2
initialisations, 8 steps; ``||J(k) - J(0)||_2`` is exact and costs ``n^2
m``)::

  python -m experiments.ngd_rate --config=configs/ngd_rate.py \
      --workdir=/tmp/ngdjax/C1

Expected result (measured). Inside Theorem 1's hypotheses (measured ``C <
1/2`` and ``eta <= (1 - 2C)/(1 + C)^2``): small 2 of 20 runs (m = 262144,
eta = 0.1 with C = 0.185, eta = 0.25 with C = 0.231; max ratios 0.810 and
0.563 against 0.9 and 0.75); full 6 of 72 runs (m = 262144 and 1048576,
eta = 0.1 and 0.25, C = 0.22-0.32; max ratios 0.810 and 0.563):
the rate holds in every run inside the hypotheses. Outside them the ratios
sit near ``(1 - eta)^2`` from m = 64 on; m = 8 breaks the bound on the full
run (0.91 at eta = 0.1). ``C`` falls roughly like ``m^(-0.28)`` (0.38 at
the widest on the full run, for eta = 1). At ``eta = 1`` the first-step
ratio falls like ``m^(-0.87 +- 0.05)`` / ``m^(-1.00 +- 0.02)``. Figures
``ratio_vs_width.png``, ``eta1_first_step.png``, ``residuals.png``,
``condition2.png``.
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
