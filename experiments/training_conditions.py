"""C3: the conditions of Theorem 1's proof along NGD training.

  python -m experiments.training_conditions \
      --config=configs/training_conditions.py:small \
      --workdir=/tmp/ngdjax/training_conditions

See configs/training_conditions.py for the presets, runtimes and expected
results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import training_conditions

_CONFIG, _WORKDIR = common.define_run_flags("training_conditions")


def main(argv):
  common.start(argv)
  return common.finish(training_conditions.run(_CONFIG.value,
                                               _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
