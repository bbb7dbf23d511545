"""The experiment layer (DESIGN.md, "Experiments"): one spec per claim.

* ``runner``: ``Experiment`` (a claim as data: schema, rules, presets,
  ``measure``, checks, report texts) and ``Run`` (a checked, resumable
  workdir with per-unit keys, progress, ``summary.json``).
* ``registry.SPECS``: every spec in report order; ``reproduce`` runs them
  and writes ``report.md``.
* ``config`` (schema and ``Rule`` checks, config files, workdirs),
  ``verdicts`` (checks as data), ``analysis`` (what several claims share),
  ``metrics`` / ``checkpoint`` / ``progress`` (files, units, ETA), ``plots``
  (PNG figures, Agg canvas, no pyplot).
* One module per claim, ``SPEC`` at its bottom: ``ngd_rate`` (C1),
  ``general_loss`` (C2), ``training_conditions`` (C3),
  ``jacobian_stability`` (C4), ``gram_limit`` (C5), ``kfac_forster`` (C6),
  ``forster_convergence`` (C7), ``lambda0_vs_n`` (C8), ``generalization``
  (C9), ``linearized_paths`` (C10), ``figure1`` (C11), ``training_curves``
  (C12), ``train`` (D1, a demonstration); ``ngd_training`` is the NGD loop
  C1-C4 share.
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
from ngdjax.experiment.runner import (
    Experiment,
    Outcome,
    Run,
    seed_key,
    unit_key,
)

__all__ = [
    "Experiment",
    "Outcome",
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
