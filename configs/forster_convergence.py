"""C7 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.forster_convergence``."""

from experiments.forster_convergence import SPEC

get_config = SPEC.get_config
