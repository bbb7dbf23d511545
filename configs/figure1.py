"""C11 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.figure1``."""

from ngdjax.experiment.figure1 import SPEC

get_config = SPEC.get_config
