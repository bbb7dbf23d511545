"""Runs every experiment and writes report.md: one row per claim C1..C12.

  python -m experiments.reproduce --workdir=/tmp/ngdjax        # small presets
  python -m experiments.reproduce --workdir=/tmp/ngdjax --full # full runs

Small presets take a few minutes on 2 CPU cores. A rerun with the same
workdir skips finished experiments and resumes an interrupted one.
"""

from pathlib import Path

from absl import app, flags

from experiments import common, registry
from ngdjax.experiment import reproduce

_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for report.md and one sub-directory per "
    "experiment.", required=True)
_FULL = flags.DEFINE_bool("full", False, "Run the full presets instead of "
                          "the small ones.")
_ONLY = flags.DEFINE_list("only", [], "Claim ids to run, e.g. C5,C8 "
                          "(default: all).")


def main(argv):
  common.start(argv)
  result = reproduce.run(_WORKDIR.value, registry.SPECS, _CONFIGS,
                         full=_FULL.value, only=_ONLY.value)
  print(Path(result["report"]).read_text())
  bad = result["counts"]["FAIL"] + result["counts"]["ERROR"]
  return 1 if bad else 0


if __name__ == "__main__":
  app.run(main)
