"""C11 settings: the appendix's Figure 1: output-space paths of GD and NGD."""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.classes = (4, 9)  # digits; output k is the one-hot entry of classes[k]
  c.n_train = 256  # training examples (N = 2 n outputs)
  c.width = 4096  # hidden units m
  c.nu = 1.0  # first-layer init scale
  c.examples = 6  # examples drawn (half from each class)
  c.num_times = 200  # points of each path
  c.decay = 1e-12  # paths run until GD's slowest mode is this small
  c.roundoff_factor = 10.0  # tol = roundoff_factor * N * eps
  c.min_path_gap = 1e-3  # GD's whole-vector path must stray this far
  return with_preset(
      c, preset,
      small=dict(n_train=64, width=1024, num_times=120))
