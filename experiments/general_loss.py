"""C2: NGD with a general loss vs 1 - 2 eta mu L / (mu + L) (Theorem 2).

  python -m experiments.general_loss --config=configs/general_loss.py:small \
      --workdir=/tmp/ngdjax/general_loss

See configs/general_loss.py for the presets, runtimes and expected results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import general_loss

_CONFIG, _WORKDIR = common.define_run_flags("general_loss")


def main(argv):
  common.start(argv)
  return common.finish(general_loss.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
