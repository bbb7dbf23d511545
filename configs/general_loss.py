"""C2: NGD with the squared-log-cosh loss vs ``1 - 2 eta mu L / (mu + L)``.

Small preset (about 35 s on 2 CPU cores; n = 8, widths 8 .. 524288,
eta = f * 2/(mu + L) for f in {0.1, 0.5, 0.9}, 1 initialisation)::

  python -m experiments.general_loss --config=configs/general_loss.py:small \
      --workdir=/tmp/ngdjax/C2_small

Full run (6 min on 2 CPU cores shared at load ~12, estimated 3 min alone,
most of it m = 2^20; n = 8, widths 8 .. 1048576, f in {0.1, 0.25, 0.5,
0.9}, 2 initialisations, 8 steps)::

  python -m experiments.general_loss --config=configs/general_loss.py \
      --workdir=/tmp/ngdjax/C2

Expected result (measured; loss ``squared_log_cosh(1)``, ``mu = 1``, ``L =
2``, ``kappa = 2``, bound ``1 - (4/3) eta``). Inside Theorem 2's hypotheses
(measured ``C < 1/3`` and ``eta`` below the step limit): small 1 of 15 runs
(m = 524288, eta = 0.067, C = 0.178, max ratio 0.807 vs 0.911); full 6 of
56 runs (m = 262144 and 1048576, eta = 0.067 and 0.167, C = 0.14-0.19,
max ratios 0.789-0.801 vs 0.911 and 0.533-0.544 vs 0.778): the
rate holds in every one. Outside them every ratio is within the bound from
m = 8 on at n = 8; at ``eta = 0.6`` the ratios are 0.04 = ``(1 - 2
eta)^2``. Figures ``ratio_vs_width.png`` and ``residuals.png``.
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
