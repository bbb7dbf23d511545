"""The one entry point every experiment runs through, and its flags.

``experiments/<name>.py`` is ``common.main(SPEC)``: ``--config`` (a
``configs/<name>.py[:preset]`` file) and ``--workdir`` are required;
``--jax_distributed`` and ``--float64`` are shared with
``experiments.reproduce``. Flags are read here only; the library takes
plain arguments.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ngdjax.experiment import config as config_lib

JAX_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False,
    "Call jax.distributed.initialize() before anything else (multi-host "
    "jobs; the coordinator and process ids come from the cluster "
    "environment).")
FLOAT64 = flags.DEFINE_bool(
    "float64", True,
    "Compute in float64 (jax_enable_x64); the comparisons with the theory's "
    "bounds are made in float64.")


def start(argv: list[str]) -> None:
  """Call first in ``main``: distributed init, then process-wide JAX setup."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Must precede any computation: it fixes the set of devices JAX sees.
  config_lib.initialize_distributed(JAX_DISTRIBUTED.value)
  jax.config.update("jax_enable_x64", FLOAT64.value)


def main(spec) -> None:
  """Runs ``spec`` (an ``Experiment``) from the command line.

  ``--config`` (``configs/<name>.py[:preset]``) and ``--workdir`` are
  required. The exit status is 0 when the claim reproduced, 1 when a check
  failed.
  """
  config = config_flags.DEFINE_config_file(
      "config", None,
      f"Configuration file, e.g. configs/{spec.name}.py:small.",
      lock_config=True)
  workdir = flags.DEFINE_string(
      "workdir", None, "Directory for config.json, metrics.jsonl, "
      "summary.json and figures; rerunning with the same workdir resumes.")
  flags.mark_flags_as_required(["config", "workdir"])

  def run(argv):
    start(argv)
    summary = spec.run(config.value, workdir.value)
    status = "PASS" if summary["passed"] else "FAIL"
    logging.info("%s %s: %s", spec.claim, status, summary["measured_text"])
    return 0 if summary["passed"] else 1

  app.run(run)
