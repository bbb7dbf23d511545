"""C2: NGD with a general loss vs 1 - 2 eta mu L / (mu + L) (Theorem 2).

  python -m experiments.general_loss --config=configs/general_loss.py:small \
      --workdir=/tmp/ngdjax/general_loss

See configs/general_loss.py for the presets, runtimes and expected results.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ngdjax.experiment import general_loss

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Configuration file, e.g. configs/general_loss.py:small.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl, summary.json "
    "and figures; rerunning with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.start(argv)
  return common.finish(general_loss.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
