"""C11 entry point; presets: ``configs/figure1.py``."""

from experiments import common
from ngdjax.experiment.figure1 import SPEC

if __name__ == "__main__":
  common.main(SPEC)
