"""C10: linearised GD vs NGD: same min-norm limit, different paths.

  python -m experiments.linearized_paths \
      --config=configs/linearized_paths.py:small \
      --workdir=/tmp/ngdjax/linearized_paths

See configs/linearized_paths.py for the presets, runtimes and expected
results.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ngdjax.experiment import linearized_paths

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Configuration file, e.g. configs/linearized_paths.py:small.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl, summary.json "
    "and figures; rerunning with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.start(argv)
  return common.finish(
      linearized_paths.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
