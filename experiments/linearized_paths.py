"""C10: linearised GD vs NGD: same min-norm limit, different paths.

  python -m experiments.linearized_paths \
      --config=configs/linearized_paths.py:small \
      --workdir=/tmp/ngdjax/linearized_paths

See configs/linearized_paths.py for the presets, runtimes and expected
results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import linearized_paths

_CONFIG, _WORKDIR = common.define_run_flags("linearized_paths")


def main(argv):
  common.start(argv)
  return common.finish(
      linearized_paths.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
