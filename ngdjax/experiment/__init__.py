"""The experiment machinery: a claim as data, a resumable run per workdir.

The claims themselves (what is measured, the checks) live in the
repository's ``experiments/`` and their settings in ``configs/``; this
package holds what every claim shares:

* ``runner``: ``Experiment`` (a claim as data: rules, config file,
  ``measure``, checks, report texts) and ``Run`` (a checked, resumable
  workdir with per-unit keys, progress, ``summary.json``).
* ``config``: the schema and ``Rule`` checks, config files, workdirs.
* ``verdicts``: checks as data, evaluated on the measured figures.
* ``metrics`` / ``checkpoint`` / ``progress``: files, units, ETA.
* ``batching``: the order of mini-batches every method of a run sees.
* ``plots``: PNG figures (Agg canvas, no pyplot); ``timing``: interleaved
  wall-clock timing.
* ``reproduce``: runs a list of experiments and writes ``report.md``.
"""

from ngdjax.experiment import (
    batching,
    checkpoint,
    config,
    metrics,
    plots,
    progress,
    timing,
)
from ngdjax.experiment.batching import epoch_batches
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
    "batching",
    "check_config",
    "check_workdir",
    "checkpoint",
    "config",
    "epoch_batches",
    "initialize_distributed",
    "load_config_file",
    "metrics",
    "plots",
    "progress",
    "read_metrics",
    "read_summary",
    "seed_key",
    "timing",
    "unit_key",
    "write_json_atomic",
    "write_summary",
]
