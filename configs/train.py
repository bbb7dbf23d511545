"""D1 presets ``digits`` (= ``small``), ``full`` and ``mnist``
(``SPEC.presets``); commands and results seen: ``ngdjax.experiment.train``."""

from experiments.train import SPEC

get_config = SPEC.get_config
