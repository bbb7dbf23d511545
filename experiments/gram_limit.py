"""C5: G(0) -> G_inf with width, and lambda_min(G(0)) >= (3/4) lambda_0.

  python -m experiments.gram_limit --config=configs/gram_limit.py:small \
      --workdir=/tmp/ngdjax/gram_limit

See configs/gram_limit.py for the presets, runtimes and expected results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import gram_limit

_CONFIG, _WORKDIR = common.define_run_flags("gram_limit")


def main(argv):
  common.start(argv)
  return common.finish(gram_limit.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
