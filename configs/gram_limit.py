"""C5 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.gram_limit``."""

from experiments.gram_limit import SPEC

get_config = SPEC.get_config
