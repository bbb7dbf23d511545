"""C1 entry point; presets: ``configs/ngd_rate.py``."""

from experiments import common
from ngdjax.experiment.ngd_rate import SPEC

if __name__ == "__main__":
  common.main(SPEC)
