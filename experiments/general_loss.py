"""C2 entry point; presets: ``configs/general_loss.py``."""

from experiments import common
from ngdjax.experiment.general_loss import SPEC

if __name__ == "__main__":
  common.main(SPEC)
