"""C7: Forster transform, error vs iteration of Algorithm 1 and Newton.

  python -m experiments.forster_convergence \
      --config=configs/forster_convergence.py:small \
      --workdir=/tmp/ngdjax/forster_convergence

See configs/forster_convergence.py for the presets, runtimes and expected
results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import forster_convergence

_CONFIG, _WORKDIR = common.define_run_flags("forster_convergence")


def main(argv):
  common.start(argv)
  return common.finish(
      forster_convergence.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
