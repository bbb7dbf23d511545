"""C5 settings: G(0) -> G_inf with width (Lemma 6)."""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n = 64  # training points on S^{d-1}
  c.d = 10
  c.nu = 1.0  # first-layer init scale (G_inf does not depend on it)
  # From below n (where G(0) has rank <= m d and is singular) to far above.
  c.widths = tuple(2**k for k in range(2, 18))  # 4 .. 131072
  c.reps = 8  # independent initialisations per width
  c.error_norm = "fro"  # error whose exponent is checked: "fro" or "max"
  c.expected_exponent = -0.5
  c.exponent_tolerance = 0.1  # pass if |exponent - expected| <= this
  c.lambda_fraction = 0.75  # Lemma 6
  c.delta = 0.1  # failure probability in Lemma 6's width scale (reported)
  return with_preset(
      c, preset,
      small=dict(n=32, widths=(4, 16, 64, 256, 1024, 4096, 16384), reps=4))
