"""C8 entry point; presets: ``configs/lambda0_vs_n.py``."""

from experiments import common
from ngdjax.experiment.lambda0_vs_n import SPEC

if __name__ == "__main__":
  common.main(SPEC)
