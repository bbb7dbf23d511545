"""C3 presets: ``SPEC.presets`` in ``ngdjax.experiment.training_conditions``."""

from experiments.training_conditions import SPEC

get_config = SPEC.get_config
