"""C9: Theorem 6's generalization measure, true vs random labels and noise.

Small preset (20-30 s on 2 shared CPU cores standalone, of which about
5 s import scikit-learn; 9 s inside reproduce; digits 4 vs 9, n = 256,
n_test = 90, label noise 0, 0.2, 0.5, 1 and random labels, 3 repetitions,
finite net m = 1024)::

  python -m experiments.generalization \
      --config=configs/generalization.py:small \
      --workdir=/tmp/ngdjax/C9_small

Full run (about 45 s on 2 CPU cores; noise 0, 0.1, .., 0.5, 1 and random
labels, finite net m = 4096)::

  python -m experiments.generalization --config=configs/generalization.py \
      --workdir=/tmp/ngdjax/C9

Expected result (measured, float64, mean of 3 repetitions). The measure
sqrt(2 y^T G_inf^{-1} y / n) is 1.11 with true labels, 3.99, 5.24, 6.03,
6.29, 6.37 at p = 0.1 .. 0.5, 6.42 with random labels, and 1.11 again at
p = 1 (y -> -y; equal to round-off). Test error of the infinite-width net
(kernel interpolant) against the true test labels: 0.000, 0.030, 0.119,
0.163, 0.385, 0.522 at p = 0 .. 0.5, 0.463 with random labels (Spearman
rank correlation with the measure 0.87 small / 0.91 full). Theorem 6's
bound for true labels is 1.38 (delta = 0.1): it holds but is vacuous. The
finite net trained by NGD (eta = 1, 10 steps) interpolates only the true
(and fully flipped) labels, test error 0.00; on noisy and random labels it
diverges (an observation; see the module docstring). Figures measure.png,
test_error.png, training_residual.png.
"""

from ngdjax.experiment import generalization


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = generalization.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.label_noise = (0.0, 0.2, 0.5, 1.0)
    config.width = 1024
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
