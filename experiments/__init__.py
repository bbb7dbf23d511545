"""Command-line entry points: absl flags and ``app.run(main)`` only.

Run from the repository root, e.g.::

  python -m experiments.reproduce --workdir=/tmp/ngdjax
  python -m experiments.gram_limit --config=configs/gram_limit.py:small \
      --workdir=/tmp/ngdjax/C5

Each ``experiments/<name>.py`` is ``common.main(SPEC)``: the work happens in
``ngdjax.experiment.<name>.SPEC.run(config, workdir)``, which the tests call
directly.
"""
