"""Run plumbing shared by the experiments (DESIGN.md, "Experiments").

* ``Run``: a workdir checked at start (config fields, writability, same
  config as any earlier run there), resumable units of work, deterministic
  per-unit JAX keys, progress with an ETA, ``summary.json``.
* ``metrics``: ``config.json``, ``metrics.jsonl`` (flushed per line) and
  ``summary.json`` (atomic) writers and readers.
* ``plots``: PNG figures from those files (Agg canvas, no pyplot).
* ``config``: ``check_config`` (unknown / missing / mistyped fields, named),
  ``check_workdir``, ``load_config_file`` (``path.py:preset``),
  ``initialize_distributed``.
* One module per experiment, each with ``default_config()`` and
  ``run(config, workdir) -> summary``: ``ngd_rate`` (C1), ``general_loss``
  (C2), ``training_conditions`` (C3), ``jacobian_stability`` (C4),
  ``gram_limit`` (C5), ``kfac_forster`` (C6), ``forster_convergence`` (C7),
  ``lambda0_vs_n`` (C8), ``generalization`` (C9), ``linearized_paths``
  (C10), ``figure1`` (C11), ``training_curves`` (C12); ``ngd_training``
  holds the NGD loop with per-step diagnostics that C1-C4 share; and
  ``reproduce`` runs them all and writes ``report.md``.
"""

from ngdjax.experiment import checkpoint, config, metrics, plots, progress
from ngdjax.experiment.checkpoint import UnitStore
from ngdjax.experiment.config import (
    check_config,
    check_workdir,
    initialize_distributed,
    load_config_file,
)
from ngdjax.experiment.metrics import (
    MetricsWriter,
    read_metrics,
    read_summary,
    write_json_atomic,
    write_summary,
)
from ngdjax.experiment.progress import Progress
from ngdjax.experiment.runner import Run, seed_key, unit_key

__all__ = [
    "MetricsWriter",
    "Progress",
    "Run",
    "UnitStore",
    "check_config",
    "check_workdir",
    "checkpoint",
    "config",
    "initialize_distributed",
    "load_config_file",
    "metrics",
    "plots",
    "progress",
    "read_metrics",
    "read_summary",
    "seed_key",
    "unit_key",
    "write_json_atomic",
    "write_summary",
]
