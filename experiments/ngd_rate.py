"""C1: NGD per-step contraction vs 1 - eta (Theorem 1).

  python -m experiments.ngd_rate --config=configs/ngd_rate.py:small \
      --workdir=/tmp/ngdjax/ngd_rate

See configs/ngd_rate.py for the presets, runtimes and expected results.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ngdjax.experiment import ngd_rate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Configuration file, e.g. configs/ngd_rate.py:small.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl, summary.json "
    "and figures; rerunning with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.start(argv)
  return common.finish(ngd_rate.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
