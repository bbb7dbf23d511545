"""C5: ``G(0) -> G_inf`` with width, and Lemma 6's ``(3/4) lambda_0``.

Small preset (about 15 s on 2 CPU cores; n = 32, widths 4 .. 16384, 4 reps)::

  python -m experiments.gram_limit --config=configs/gram_limit.py:small \
      --workdir=/tmp/ngdjax/C5_small

Full run (about 40 s on 2 CPU cores; n = 64, widths 4 .. 131072,
8 reps)::

  python -m experiments.gram_limit --config=configs/gram_limit.py \
      --workdir=/tmp/ngdjax/C5

Expected result: the relative error of ``G(0)`` falls like ``m^(-1/2)``
(measured: Frobenius exponent -0.487 +- 0.010 on the small preset, -0.498
+- 0.004 on the full run) and ``lambda_min(G(0)) >= (3/4) lambda_0`` from
``m* = 64`` (small) / ``m* = 256`` (full) on; figures ``gram_error.png`` and
``lambda_min.png``.
"""

from ngdjax.experiment import gram_limit


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = gram_limit.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.n = 32
    config.widths = tuple(4**k for k in range(1, 8))  # 4 .. 16384
    config.reps = 4
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
