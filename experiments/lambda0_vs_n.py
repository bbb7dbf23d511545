"""C8: lambda_0 against n for points uniform on the sphere.

  python -m experiments.lambda0_vs_n --config=configs/lambda0_vs_n.py:small \
      --workdir=/tmp/ngdjax/lambda0_vs_n

See configs/lambda0_vs_n.py for the presets, runtimes and expected results.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from ngdjax.experiment import lambda0_vs_n

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Configuration file, e.g. configs/lambda0_vs_n.py:small.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl, summary.json "
    "and figures; rerunning with the same workdir resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  common.start(argv)
  return common.finish(lambda0_vs_n.run(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
