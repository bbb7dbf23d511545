"""C12: training curves of NGD, K-FAC (+- Forster), GD and Adam on digits.

  python -m experiments.training_curves \
      --config=configs/training_curves.py:small \
      --workdir=/tmp/ngdjax/training_curves

See configs/training_curves.py for the presets, runtimes and expected results.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ngdjax.experiment import training_curves

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Configuration file, e.g. configs/training_curves.py:small.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl, summary.json "
    "and figures; rerunning with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.start(argv)
  return common.finish(training_curves.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
