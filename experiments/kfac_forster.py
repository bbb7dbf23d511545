"""C6 entry point; presets: ``configs/kfac_forster.py``."""

from experiments import common
from ngdjax.experiment.kfac_forster import SPEC

if __name__ == "__main__":
  common.main(SPEC)
