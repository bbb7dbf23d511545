"""C8 presets ``small`` and ``full`` (``SPEC.presets``); runtimes and
results seen: ``ngdjax.experiment.lambda0_vs_n``."""

from experiments.lambda0_vs_n import SPEC

get_config = SPEC.get_config
