"""Experiment configurations: ``get_config(arg)`` files, one per experiment.

Each ``configs/<name>.py`` is ``get_config = SPEC.get_config`` of
``ngdjax.experiment.<name>``: ``default_config()`` (the full run, also the
schema a run is checked against) with the spec's presets selected by
``:preset``, e.g. ``--config=configs/gram_limit.py:small``. A config file of
your own may build any ConfigDict with the same fields.
"""
