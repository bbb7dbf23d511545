"""C8: lambda_0 against n for points uniform on the sphere.

  python -m experiments.lambda0_vs_n --config=configs/lambda0_vs_n.py:small \
      --workdir=/tmp/ngdjax/lambda0_vs_n

See configs/lambda0_vs_n.py for the presets, runtimes and expected results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import lambda0_vs_n

_CONFIG, _WORKDIR = common.define_run_flags("lambda0_vs_n")


def main(argv):
  common.start(argv)
  return common.finish(lambda0_vs_n.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
