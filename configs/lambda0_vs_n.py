"""C8: ``lambda_0`` against ``n`` for points uniform on the sphere.

Small preset (about 10 s on 2 CPU cores; d = 10, n = 16 .. 256, 3 reps)::

  python -m experiments.lambda0_vs_n --config=configs/lambda0_vs_n.py:small \
      --workdir=/tmp/ngdjax/C8_small

Full run (about 1 minute on 2 CPU cores; n = 16 .. 2048, 5 reps)::

  python -m experiments.lambda0_vs_n --config=configs/lambda0_vs_n.py \
      --workdir=/tmp/ngdjax/C8

Expected result: ``lambda_0`` falls like a power of ``n`` (fitted exponent
about -0.37 +- 0.03 for d = 10 on the small preset, log-log ``R^2`` about
0.9, an exponential fit clearly worse); figure ``lambda0_vs_n.png``.
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
