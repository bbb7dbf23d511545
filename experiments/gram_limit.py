"""C5 entry point; presets: ``configs/gram_limit.py``."""

from experiments import common
from ngdjax.experiment.gram_limit import SPEC

if __name__ == "__main__":
  common.main(SPEC)
