"""C9: Theorem 6's generalization measure, true vs random labels, noise.

  python -m experiments.generalization \
      --config=configs/generalization.py:small \
      --workdir=/tmp/ngdjax/generalization

See configs/generalization.py for the presets, runtimes and expected results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import generalization

_CONFIG, _WORKDIR = common.define_run_flags("generalization")


def main(argv):
  common.start(argv)
  return common.finish(generalization.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
