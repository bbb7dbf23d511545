"""C4: ``||J(k) - J(0)||_2`` along NGD vs width, beside the Lemma 7 bound.

Small preset (about 20 s on 2 CPU cores; n = 16, widths 16 .. 4096, 2
initialisations, 8 steps)::

  python -m experiments.jacobian_stability \
      --config=configs/jacobian_stability.py:small \
      --workdir=/tmp/ngdjax/C4_small

Full run (about 2 min on 2 CPU cores, most of it the power iterations at
m = 16384; n = 32, widths 16 .. 16384, 3
initialisations)::

  python -m experiments.jacobian_stability \
      --config=configs/jacobian_stability.py --workdir=/tmp/ngdjax/C4

Expected result (measured, small / full; NGD with eta = 0.5): ``max_k
||J(k) - J(0)||_2`` decays like ``m^(-0.259 +- 0.019)`` / ``m^(-0.286 +-
0.005)``, faster than the Lemma 7 bound (``m^(-0.17)`` / ``m^(-0.18)`` at
the measured radius, ``m^(-1/6)`` at a fixed one) and far below it: 0.175
vs 6.24 at m = 4096, 0.127 vs 7.76 at m = 16384 (delta = 0.1), at most
0.053 / 0.033 of the bound in any run. Condition 2 with ``C = 1/2`` needs
``||J - J(0)||_2 <= sqrt(lambda_min(G(0))) / 6`` (0.063 / 0.054): not met
in the sweep (measured C = 1.4 / 1.18 at the widest width); the fitted law
would reach it near m ~ 2e5 / 3e5. Figures ``jacobian_change.png`` and
``jacobian_path.png``.
"""

from ngdjax.experiment import jacobian_stability


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = jacobian_stability.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.n = 16
    config.widths = (16, 64, 256, 1024, 4096)
    config.reps = 2
    config.num_steps = 8
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
