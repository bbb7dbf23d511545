"""C4: ||J(k) - J(0)||_2 along NGD vs width and the Lemma 7 bound.

  python -m experiments.jacobian_stability \
      --config=configs/jacobian_stability.py:small \
      --workdir=/tmp/ngdjax/jacobian_stability

See configs/jacobian_stability.py for the presets, runtimes and expected
results.
"""

from absl import app

from experiments import common
from ngdjax.experiment import jacobian_stability

_CONFIG, _WORKDIR = common.define_run_flags("jacobian_stability")


def main(argv):
  common.start(argv)
  return common.finish(jacobian_stability.run(_CONFIG.value,
                                               _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
