"""C2 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.general_loss``."""

from ngdjax.experiment.general_loss import SPEC

get_config = SPEC.get_config
