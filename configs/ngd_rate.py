"""C1 presets: ``SPEC.presets`` in ``ngdjax.experiment.ngd_rate``."""

from experiments.ngd_rate import SPEC

get_config = SPEC.get_config
