"""C4 settings: the Jacobian's change during NGD training (Lemma 7).

The values of the full run, then the presets (``small``, ``full``) that change
some of them; ``experiments/jacobian_stability.py`` measures and judges. Run
from the repository root::

  python -m experiments.jacobian_stability \
      --config=configs/jacobian_stability.py:small \
      --workdir=/tmp/ngdjax/C4_small

Any field can be changed on the command line, e.g. ``--config.seed=1``.
"""

import ml_collections

from ngdjax.experiment.config import with_preset


def get_config(preset: str = "full") -> ml_collections.ConfigDict:
  """The config of ``preset``: the full run's values, then its changes."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.n = 32  # training points on S^{d-1}
  c.d = 10
  c.nu = 1.0  # first-layer init scale
  c.reps = 3  # initialisations per width (shared by every eta)
  c.num_steps = 10
  c.residual_floor = 1e-10  # stop once ||r(k)|| / ||r(0)|| is this small
  c.widths = (16, 64, 256, 1024, 4096, 16384)
  c.learning_rate = 0.5
  c.delta = 0.1  # Lemma 7's failure probability
  return with_preset(
      c, preset,
      small=dict(n=16, widths=(16, 64, 256, 1024, 4096), reps=2, num_steps=8))
