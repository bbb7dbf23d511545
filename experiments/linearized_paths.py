"""C10 entry point; presets: ``configs/linearized_paths.py``."""

from experiments import common
from ngdjax.experiment.linearized_paths import SPEC

if __name__ == "__main__":
  common.main(SPEC)
