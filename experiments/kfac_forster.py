"""C6: K-FAC rate vs cond(X^T X); K-FAC after the Forster transform equals NGD.

  python -m experiments.kfac_forster --config=configs/kfac_forster.py:small \
      --workdir=/tmp/ngdjax/kfac_forster

See configs/kfac_forster.py for the presets, runtimes and expected results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import kfac_forster

_CONFIG, _WORKDIR = common.define_run_flags("kfac_forster")


def main(argv):
  common.start(argv)
  return common.finish(kfac_forster.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
