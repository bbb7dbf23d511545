"""C3 entry point; presets: ``configs/training_conditions.py``."""

from experiments import common
from ngdjax.experiment.training_conditions import SPEC

if __name__ == "__main__":
  common.main(SPEC)
