"""Flags every entry point shares, and the first call of every ``main``.

Defined once here, so each entry point accepts ``--jax_distributed`` and
``--float64`` without repeating them. Flags are read here and in the entry
points only; the library takes plain arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from absl import app, flags, logging

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


def finish(summary: Mapping[str, Any]) -> int:
  """Logs the outcome; the exit status is 0 when the claim reproduced."""
  status = "PASS" if summary.get("passed") else "FAIL"
  logging.info("%s %s: %s", summary.get("claim"), status,
               summary.get("measured_text"))
  return 0 if summary.get("passed") else 1
