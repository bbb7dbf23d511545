"""C6 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.kfac_forster``."""

from experiments.kfac_forster import SPEC

get_config = SPEC.get_config
