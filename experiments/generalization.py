"""C9 entry point; presets: ``configs/generalization.py``."""

from experiments import common
from ngdjax.experiment.generalization import SPEC

if __name__ == "__main__":
  common.main(SPEC)
