"""C3 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.training_conditions``."""

from ngdjax.experiment.training_conditions import SPEC

get_config = SPEC.get_config
