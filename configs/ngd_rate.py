"""C1 presets: ``SPEC.presets`` in ``ngdjax.experiment.ngd_rate``."""

from ngdjax.experiment.ngd_rate import SPEC

get_config = SPEC.get_config
