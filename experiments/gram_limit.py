"""C5: G(0) -> G_inf with width, and lambda_min(G(0)) >= (3/4) lambda_0.

  python -m experiments.gram_limit --config=configs/gram_limit.py:small \
      --workdir=/tmp/ngdjax/gram_limit

See configs/gram_limit.py for the presets, runtimes and expected results.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ngdjax.experiment import gram_limit

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Configuration file, e.g. configs/gram_limit.py:small.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl, summary.json "
    "and figures; rerunning with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.start(argv)
  return common.finish(gram_limit.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
