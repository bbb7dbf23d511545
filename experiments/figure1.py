"""C11: the appendix's Figure 1, output-space paths of GD and NGD.

  python -m experiments.figure1 \
      --config=configs/figure1.py:small \
      --workdir=/tmp/ngdjax/figure1

See configs/figure1.py for the presets, runtimes and expected
results.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ngdjax.experiment import figure1

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Configuration file, e.g. configs/figure1.py:small.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl, summary.json "
    "and figures; rerunning with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.start(argv)
  return common.finish(
      figure1.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
