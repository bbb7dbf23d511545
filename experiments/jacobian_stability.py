"""C4 entry point; presets: ``configs/jacobian_stability.py``."""

from experiments import common
from ngdjax.experiment.jacobian_stability import SPEC

if __name__ == "__main__":
  common.main(SPEC)
