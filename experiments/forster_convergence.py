"""C7: Forster transform, error vs iteration of Algorithm 1 and Newton.

  python -m experiments.forster_convergence \
      --config=configs/forster_convergence.py:small \
      --workdir=/tmp/ngdjax/forster_convergence

See configs/forster_convergence.py for the presets, runtimes and expected
results.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ngdjax.experiment import forster_convergence

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Configuration file, e.g. configs/forster_convergence.py:small.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl, summary.json "
    "and figures; rerunning with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.start(argv)
  return common.finish(
      forster_convergence.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
