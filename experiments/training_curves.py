"""C12: training curves of NGD, K-FAC (+- Forster), GD and Adam on digits.

  python -m experiments.training_curves \
      --config=configs/training_curves.py:small \
      --workdir=/tmp/ngdjax/training_curves

See configs/training_curves.py for the presets, runtimes and expected results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import training_curves

_CONFIG, _WORKDIR = common.define_run_flags("training_curves")


def main(argv):
  common.start(argv)
  return common.finish(training_curves.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
