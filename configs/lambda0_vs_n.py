"""C8: ``lambda_0`` against ``n`` for points uniform on the sphere.

Small preset (about 10 s on 2 CPU cores; d = 10, n = 16 .. 256, 3 reps)::

  python -m experiments.lambda0_vs_n --config=configs/lambda0_vs_n.py:small \
      --workdir=/tmp/ngdjax/C8_small

Full run (about 3 minutes on 2 CPU cores, most of it the n = 2048
eigendecompositions; n = 16 .. 2048, 5 reps)::

  python -m experiments.lambda0_vs_n --config=configs/lambda0_vs_n.py \
      --workdir=/tmp/ngdjax/C8

Expected result: ``lambda_0`` falls like a power of ``n`` (measured for
d = 10: exponent -0.366 +- 0.032, log-log ``R^2`` 0.907 against 0.775 for an
exponential fit on the small preset; -0.300 +- 0.013, ``R^2`` 0.933 against
0.555 on the full run); figure ``lambda0_vs_n.png``. The small preset's
``R^2`` is close to the 0.9 threshold: seed-to-seed scatter of ``lambda_0``
at fixed ``n`` is what keeps it below 1.
"""

from ngdjax.experiment import lambda0_vs_n


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = lambda0_vs_n.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.ns = (16, 32, 64, 128, 256)
    config.reps = 3
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
