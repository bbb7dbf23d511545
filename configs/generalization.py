"""C9 settings: the generalization measure of Theorem 6 on digits."""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.classes = (4, 9)
  c.n_train = 256  # training examples (of 271 after the split)
  c.test_fraction = 0.25
  c.label_noise = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0)  # fractions flipped
  c.reps = 3  # repetitions: split, subsample and corruption seeds
  c.width = 4096  # hidden units of the trained net
  c.nu = 1.0
  c.ngd_lr = 1.0
  c.ngd_damping = 0.0
  c.train_steps = 10
  c.delta = 0.1  # Theorem 6's failure probability (the bound's 2nd term)
  c.fit_tol = 1e-3  # finite net fits if ||u - y|| <= this ||y||
  c.min_error_gap = 0.1  # test_error_grows
  c.preprocessing = ("centred", "raw")  # the first is judged
  c.lemma12_rtol = 0.1  # Lemma 12 (eqn. 72): ||w - w(0)|| within this
  # Theorem 6's bound where it can speak (at n = 256 it is above 1): a
  # binary task over all ten digits (digits < bound_split -> +1), true
  # labels, at each n of bound_ns (0: every training image, 1347).
  c.bound_split = 5
  c.bound_ns = (128, 256, 512, 1024, 0)
  return with_preset(
      c, preset,
      small=dict(label_noise=(0.0, 0.2, 0.5, 1.0), width=1024))
