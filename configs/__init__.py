"""Experiment settings: one ``get_config(preset)`` file per experiment.

``configs/<name>.py`` holds the settings of ``experiments/<name>.py`` as
values a reader can change: ``get_config`` builds the full run's
``ml_collections.ConfigDict`` field by field, each with its comment, and
ends with the presets (``small``, ...) that change some of them
(``ngdjax.experiment.config.with_preset``). The full run's fields are the
experiment's schema: a run whose config has another field, or lacks one,
fails before any work, naming it.

Select a preset after the file name, change any field on the command line::

  python -m experiments.gram_limit --config=configs/gram_limit.py:small \
      --config.reps=8 --workdir=/tmp/ngdjax/C5

A config file of your own may build any ``ConfigDict`` with the same
fields. ``ngd_training.base`` holds the fields C1-C4 share.
"""
