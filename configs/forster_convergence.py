"""C7: the Forster transform, Algorithm 1 against Newton's method.

Small preset (about 7 s on 2 CPU cores; n = 500, d = 10, 5 timed calls)::

  python -m experiments.forster_convergence \
      --config=configs/forster_convergence.py:small \
      --workdir=/tmp/ngdjax/C7_small

Full run (about 8 s on 2 CPU cores; n = 1000, d = 20, 9 timed calls)::

  python -m experiments.forster_convergence \
      --config=configs/forster_convergence.py --workdir=/tmp/ngdjax/C7

Expected result: both methods reach error 1e-10 on Gaussian, anisotropic,
near-degenerate and near-critical data; Newton in fewer iterations
(measured, small preset, Algorithm 1 / Newton: 16 / 4, 18 / 5, 36 / 7,
412 / 7 iterations; full run: 12 / 3, 14 / 5, 25 / 7, 451 / 7). Newton's
steps cost more, so in time the two are about even except on near-critical
data, where Newton is about 10x faster (full run: 126 ms against 10 ms).
Figure ``error_vs_iteration.png``.
"""

from ngdjax.experiment import forster_convergence


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = forster_convergence.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.n = 500
    config.d = 10
    config.repeats = 5
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
