"""C11: the appendix's Figure 1, output-space paths of GD and NGD.

Small preset (about 8 s on 2 CPU cores; n = 64 digits 4 vs 9, m = 1024)::

  python -m experiments.figure1 --config=configs/figure1.py:small \
      --workdir=/tmp/ngdjax/C11_small

Full run (about 8 s on 2 CPU cores; n = 256, m = 4096)::

  python -m experiments.figure1 --config=configs/figure1.py \
      --workdir=/tmp/ngdjax/C11

Expected result (measured, small / full): NGD's output paths are straight
to 1.9e-14 / 7.1e-15 (relative, worst example or the whole vector) while
GD's whole output vector strays 0.30 / 0.37 ``||y - u(0)||`` from the
segment (per example: median 0.29 / 0.34); both end at ``y`` (the limit
exactly; GD at the last drawn time to 7e-15 / 4e-15). cond(G) = 1.1e3 /
5.2e3. Figures ``figure1.png`` (six examples, each in its 2-D output
plane) and ``whole_vector.png`` (the whole output vector projected on the
segment and GD's largest excursion, and the residual against time).
"""

from ngdjax.experiment import figure1


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = figure1.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.n_train = 64
    config.width = 1024
    config.num_times = 120
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
