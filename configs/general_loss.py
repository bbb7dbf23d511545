"""C2 presets: ``SPEC.presets`` in ``ngdjax.experiment.general_loss``."""

from experiments.general_loss import SPEC

get_config = SPEC.get_config
