"""C4: ||J(k) - J(0)||_2 along NGD vs width and the Lemma 7 bound.

  python -m experiments.jacobian_stability \
      --config=configs/jacobian_stability.py:small \
      --workdir=/tmp/ngdjax/jacobian_stability

See configs/jacobian_stability.py for the presets, runtimes and expected
results.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ngdjax.experiment import jacobian_stability

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Configuration file, e.g. configs/jacobian_stability.py:small.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl, summary.json "
    "and figures; rerunning with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.start(argv)
  return common.finish(jacobian_stability.run(_CONFIG.value,
                                               _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
