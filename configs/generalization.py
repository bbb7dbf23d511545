"""C9 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.generalization``."""

from experiments.generalization import SPEC

get_config = SPEC.get_config
