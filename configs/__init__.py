"""Experiment configurations: ``get_config(arg)`` files, one per experiment.

Each ``configs/<name>.py`` starts from ``ngdjax.experiment.<name>``'s
``default_config()`` (the full run, which is also the schema a run is
checked against) and defines presets selected with ``:preset``, e.g.
``--config=configs/gram_limit.py:small``.
"""
