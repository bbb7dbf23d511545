"""D1 settings: a classifier on real data: NGD, K-FAC, Adam and SGD.

The values of the digits run (``digits``, also ``small``); ``full`` and
``mnist`` change some of them, and ``get_config()`` is ``full``.
"""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data_dir = ""  # MNIST IDX files here; empty: scikit-learn's digits
  c.n_train = 0  # MNIST only: a random subset of this many (0: all)
  c.n_test = 0  # MNIST only
  c.test_fraction = 0.2  # digits only
  c.widths = (512,)  # hidden layers
  c.w_std = 1.4142135623730951  # sqrt(2): He scaling for ReLU
  c.batch_size = 64
  # "adaptive": the quadratic-model step size and momentum and the
  # Levenberg-Marquardt damping (ngdjax.optim.quadratic); numbers give a grid.
  c.ngd_lrs = ("adaptive",)
  c.ngd_dampings = ("adaptive",)
  c.kfac_lrs = ("adaptive",)
  c.kfac_dampings = ("adaptive",)
  # The adaptive step's quadratic model on the current batch (1) or on the
  # current and the previous batch (2). NGD's direction is the exact
  # minimiser of its own batch's model, so with 1 the model always returns
  # step size 1 and momentum 0; K-FAC with 1 falls from its best accuracy
  # late in longer runs (500 steps). A number grid uses 1.
  c.ngd_model_batches = 2
  c.kfac_model_batches = 2
  c.kfac_decay = 0.95
  c.kfac_inverse_every = 10
  c.kfac_statistics_every = 1
  c.kfac_inverse = "cholesky"  # or "eigh"; the same step at fixed damping
  c.adam_lrs = (3e-3, 1e-2, 3e-2)
  c.sgd_lrs = (0.1, 0.3, 1.0)  # on the batch-mean loss
  c.curvature_steps = 200  # budget of ngd and kfac
  c.first_order_steps = 400  # budget of adam and sgd
  c.eval_every = 10
  c.cosine_decay = False  # True: every step size decays to 0 (cosine)
  c.target_accuracy = 0.97
  c.grid_extensions = 2  # rounds of extend_grid (0: the grid as given)
  longer = dict(curvature_steps=500, first_order_steps=1500)
  return with_preset(
      c, preset, digits={}, small={},
      full=dict(longer, adam_lrs=(1e-3, 3e-3, 1e-2, 3e-2),
                sgd_lrs=(0.03, 0.1, 0.3, 1.0)),
      mnist=dict(longer, batch_size=128, eval_every=50))
