"""C4 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.jacobian_stability``."""

from ngdjax.experiment.jacobian_stability import SPEC

get_config = SPEC.get_config
