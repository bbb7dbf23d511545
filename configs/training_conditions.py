"""C3: Lemma 2's ``lambda_min(G(k))``, Lemma 3's distance and activation flips.

Small preset (about 15 s on 2 CPU cores; n = 16, widths 8 .. 4096, 2
initialisations, 20 steps)::

  python -m experiments.training_conditions \
      --config=configs/training_conditions.py:small \
      --workdir=/tmp/ngdjax/C3_small

Full run (about 30 s on 2 CPU cores; n = 32, widths 8 .. 16384, 3
initialisations)::

  python -m experiments.training_conditions \
      --config=configs/training_conditions.py --workdir=/tmp/ngdjax/C3

Expected result (measured, small / full; NGD with eta = 0.5):
``min_k lambda_min(G(k)) / lambda_min(G(0))`` is 0.965 / 0.997 at the widest
width and above 4/9 from ``m* = 32`` / ``16`` on; at m = 8 an example's
activations all die and ``G(k)`` turns singular (ratio 0). ``max_k ||w(k) -
w(0)||`` stays below ``3 ||y - u(0)|| / sqrt(lambda_min(G(0)))`` at every
width, by a wide margin (at most 0.33 / 0.23 of it; 9.6 vs 36.6 and 12.4 vs
64.7 at the widest width). The flipped fraction falls like ``m^(-0.454 +-
0.025)`` / ``m^(-0.451 +- 0.011)`` (0.017 at m = 4096, 0.011 at m =
16384), faster than the ``m^(-1/3)`` of the Lemma 7-8 bound, which is still
above 1 (1.9-2.4: vacuous) at the widest width; it drops below 1 only past
m ~ 1e5, so it is reported, not checked (a check that a fraction stays
below a number >= 1 cannot fail). Figures ``lambda_min.png``,
``lambda_path.png``, ``distance.png``, ``flips.png``.
"""

from ngdjax.experiment import training_conditions


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = training_conditions.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.n = 16
    config.widths = (8, 32, 128, 512, 4096)
    config.reps = 2
    config.num_steps = 20
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
