"""C6: K-FAC rate vs cond(X^T X); K-FAC after the Forster transform equals NGD.

  python -m experiments.kfac_forster --config=configs/kfac_forster.py:small \
      --workdir=/tmp/ngdjax/kfac_forster

See configs/kfac_forster.py for the presets, runtimes and expected results.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ngdjax.experiment import kfac_forster

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Configuration file, e.g. configs/kfac_forster.py:small.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl, summary.json "
    "and figures; rerunning with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.start(argv)
  return common.finish(kfac_forster.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
