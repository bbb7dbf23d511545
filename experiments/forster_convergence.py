"""C7 entry point; presets: ``configs/forster_convergence.py``."""

from experiments import common
from ngdjax.experiment.forster_convergence import SPEC

if __name__ == "__main__":
  common.main(SPEC)
