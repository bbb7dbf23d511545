"""C10 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.linearized_paths``."""

from experiments.linearized_paths import SPEC

get_config = SPEC.get_config
