"""Command-line entry points: absl flags and ``app.run(main)`` only.

Run from the repository root, e.g.::

  python -m experiments.reproduce --workdir=/tmp/ngdjax
  python -m experiments.gram_limit --config=configs/gram_limit.py:small \
      --workdir=/tmp/ngdjax/C5

Each ``experiments/<name>.py`` is ``common.main(SPEC)``: the work happens in
``ngdjax.experiment.<name>.SPEC.run(config, workdir)``, which the tests call
directly.
"""

import os

# OpenBLAS (numpy's, and through scipy jaxlib's, LAPACK) starts a thread per
# core. On a machine whose cores are busy those threads spin against the
# other jobs, and every Cholesky or eigh slows down many times: D1's NGD ran
# 200 steps in 70.8 s instead of 5.1 s beside two busy loops on 2 cores. The
# experiments' LAPACK calls are small, so they get one thread unless the
# caller chose otherwise. This must run before numpy loads OpenBLAS, which
# ``python -m experiments.<name>`` guarantees (this package is imported
# first).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
