"""C12 entry point; presets: ``configs/training_curves.py``."""

from experiments import common
from ngdjax.experiment.training_curves import SPEC

if __name__ == "__main__":
  common.main(SPEC)
