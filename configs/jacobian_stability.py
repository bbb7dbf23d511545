"""C4 presets: ``SPEC.presets`` in ``ngdjax.experiment.jacobian_stability``."""

from experiments.jacobian_stability import SPEC

get_config = SPEC.get_config
