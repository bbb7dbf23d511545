"""C11: the appendix's Figure 1, output-space paths of GD and NGD.

  python -m experiments.figure1 \
      --config=configs/figure1.py:small \
      --workdir=/tmp/ngdjax/figure1

See configs/figure1.py for the presets, runtimes and expected
results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import figure1

_CONFIG, _WORKDIR = common.define_run_flags("figure1")


def main(argv):
  common.start(argv)
  return common.finish(
      figure1.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
