"""C12 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.training_curves``."""

from experiments.training_curves import SPEC

get_config = SPEC.get_config
