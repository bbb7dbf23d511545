"""C8: ``lambda_0`` against ``n`` for points uniform on the sphere.

Small preset (about 10 s on 2 CPU cores; d = 10, n = 16 .. 256, 4 reps)::

  python -m experiments.lambda0_vs_n --config=configs/lambda0_vs_n.py:small \
      --workdir=/tmp/ngdjax/C8_small

Full run (about 3 minutes on 2 CPU cores, most of it the n = 2048
eigendecompositions; n = 16 .. 2048, 5 reps)::

  python -m experiments.lambda0_vs_n --config=configs/lambda0_vs_n.py \
      --workdir=/tmp/ngdjax/C8

Expected result: ``lambda_0`` falls like a power of ``n`` no faster than
``n^(-1/2)`` (before this criterion, with 3 reps on the small preset: -0.366
+- 0.032; full run -0.300 +- 0.013, so ``beta <= 0.33`` at 2 stderr);
figure ``lambda0_vs_n.png``. ``R^2`` is reported, not judged (it scatters
around 0.9 from draw to draw).
"""

from ngdjax.experiment import lambda0_vs_n


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = lambda0_vs_n.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.ns = (16, 32, 64, 128, 256)
    config.reps = 4
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
