"""C9: Theorem 6's generalization measure, true vs random labels, noise.

  python -m experiments.generalization \
      --config=configs/generalization.py:small \
      --workdir=/tmp/ngdjax/generalization

See configs/generalization.py for the presets, runtimes and expected results.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ngdjax.experiment import generalization

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Configuration file, e.g. configs/generalization.py:small.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl, summary.json "
    "and figures; rerunning with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.start(argv)
  return common.finish(generalization.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
