"""C10: linearised GD vs NGD, same minimum-norm limit, different paths.

Small preset (about 10 s on 2 CPU cores; n = 16, d = 10, m = 1024)::

  python -m experiments.linearized_paths \
      --config=configs/linearized_paths.py:small \
      --workdir=/tmp/ngdjax/C10_small

Full run (about 12 s on 2 CPU cores; n = 32, d = 10, m = 4096)::

  python -m experiments.linearized_paths \
      --config=configs/linearized_paths.py --workdir=/tmp/ngdjax/C10

Expected result (measured, small / full): every end point (GD and NGD,
flow and steps, ``min_norm_solution``) equals ``-pinv(J) r0`` to 6e-15 /
1.2e-14; GD's weight path strays 0.231 / 0.232 ``||w*||`` from NGD's
straight one; NGD's output path is straight to 1e-15 while GD's bends
0.38 / 0.32 ``||r0||`` off; NGD with ``eta = 1`` leaves ``||u(1) - y||``
of 3e-16 / 5e-16 ``||r0||``. Extra: the real network trained by exact NGD
(``eta = 1``) misses ``y`` by 0.053 / 0.040 ``||r0||`` after the first step
(the linearised model by 0) and ends 0.081 / 0.062 ``||w*||`` from the
linearised end point. Figures ``residual_norm.png``,
``weight_distance.png`` and ``weight_paths.png``.
"""

from ngdjax.experiment import linearized_paths


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = linearized_paths.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.n = 16
    config.width = 1024
    config.num_times = 60
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
