"""C12: training curves of NGD, K-FAC (+- Forster), GD and Adam on digits.

Small preset (about 25 s on 2 shared CPU cores standalone, of which about
5 s import scikit-learn; 19 s inside reproduce; digits 4 vs 9, n = 256,
PCA to d = 32, widths 512 and 2048; budgets 20 steps for NGD/K-FAC, 200
for GD/Adam)::

  python -m experiments.training_curves \
      --config=configs/training_curves.py:small \
      --workdir=/tmp/ngdjax/C12_small

Full run (about 5 minutes on 2 shared CPU cores; widths 512, 2048, 8192;
budgets 40 / 1000 steps)::

  python -m experiments.training_curves \
      --config=configs/training_curves.py --workdir=/tmp/ngdjax/C12

Expected result (measured, float64): steps to L <= 1e-4 L(0) at m = 512 /
2048 / 8192: NGD (eta = 1) 6 / 4 / 2; K-FAC after Forster (eta = 1/d) 4 / 3
/ 2; Adam (best of lr 1e-3, 1e-2, 1e-1) 76 / 77 / 79; K-FAC on the raw
(PCA) inputs (eta = 1/(n max h)) not within 20 (small) / 40 steps at 512,
35 and 22 steps at 2048 and 8192 (full); GD (eta = 1.9 / lambda_max(G(0)),
the better of 1.0 and 1.9) not within 1000 steps (L = 1.3e-3 .. 3.1e-3
L(0) at the end). Wall-clock to the target: NGD and K-FAC + Forster a few
hundredths to tenths of a second, Adam 0.1-4 s; these numbers move by
factors of several with the load of the machine. Figures
loss_vs_step_m<width>.png and loss_vs_time_m<width>.png.
"""

from ngdjax.experiment import training_curves


def get_config(arg: str | None = None):
  """``arg``: ``None`` or ``"full"`` for the full run, ``"small"``."""
  config = training_curves.default_config()
  if arg in (None, "", "full"):
    return config
  if arg == "small":
    config.widths = (512, 2048)
    config.curvature_steps = 20
    config.first_order_steps = 200
    return config
  raise ValueError(f'unknown preset {arg!r}; use "small" or "full"')
