"""Classifier on real data: NGD, K-FAC, Adam and SGD with mini-batches.

A demonstration, not a claim of the paper. Digits preset (all 10 classes
of scikit-learn's digits, stratified 80/20 split, pixels standardised,
MLP 64-512-10, batch 64; ``small`` is the same run, used by
``experiments.reproduce``)::

  python -m experiments.train --config=configs/train.py:digits \
      --workdir=/tmp/ngdjax/train_digits

MNIST from IDX files (``train-images-idx3-ubyte[.gz]`` etc. in DIR)::

  python -m experiments.train --config=configs/train.py:mnist \
      --config.data_dir=DIR --workdir=/tmp/ngdjax/train_mnist

Expected result: see the measured table in the report below (filled in
from the run on this machine).
"""

from ngdjax.experiment import train


def get_config(arg: str | None = None):
  """``arg``: ``"digits"`` / ``"small"`` (same run), ``"mnist"``, or
  ``None``/``"full"`` (digits with longer budgets)."""
  config = train.default_config()
  if arg in ("digits", "small"):
    return config
  if arg in (None, "", "full"):
    config.curvature_steps = 500
    config.first_order_steps = 1500
    config.adam_lrs = (1e-3, 3e-3, 1e-2, 3e-2)
    config.sgd_lrs = (0.03, 0.1, 0.3, 1.0)
    return config
  if arg == "mnist":
    config.batch_size = 128
    config.curvature_steps = 500
    config.first_order_steps = 1500
    config.eval_every = 50
    return config
  raise ValueError(
      f'unknown preset {arg!r}; use "digits", "small", "full" or "mnist"')
