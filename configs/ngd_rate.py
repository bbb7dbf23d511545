"""C1 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.ngd_rate``."""

from ngdjax.experiment.ngd_rate import SPEC

get_config = SPEC.get_config
