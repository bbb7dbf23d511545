"""Classifier on real data: NGD, K-FAC, Adam and SGD with mini-batches.

  python -m experiments.train \
      --config=configs/train.py:digits \
      --workdir=/tmp/ngdjax/train_digits

See configs/train.py for the presets, runtimes and expected results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import train

_CONFIG, _WORKDIR = common.define_run_flags("train")


def main(argv):
  common.start(argv)
  return common.finish(train.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
