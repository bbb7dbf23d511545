"""C11 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.figure1``."""

from experiments.figure1 import SPEC

get_config = SPEC.get_config
