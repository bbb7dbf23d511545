"""C1: NGD per-step contraction vs 1 - eta (Theorem 1).

  python -m experiments.ngd_rate --config=configs/ngd_rate.py:small \
      --workdir=/tmp/ngdjax/ngd_rate

See configs/ngd_rate.py for the presets, runtimes and expected results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import ngd_rate

_CONFIG, _WORKDIR = common.define_run_flags("ngd_rate")


def main(argv):
  common.start(argv)
  return common.finish(ngd_rate.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
