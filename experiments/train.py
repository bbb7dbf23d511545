"""D1 entry point; presets: ``configs/train.py``."""

from experiments import common
from ngdjax.experiment.train import SPEC

if __name__ == "__main__":
  common.main(SPEC)
