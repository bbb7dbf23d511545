"""The order of mini-batches that every method of a run sees.

A training comparison is fair only when every method sees the same
examples in the same order. ``epoch_batches`` draws that order once, from
a seed, as numpy index arrays, which a run in another interpreter (e.g. a
reference library in its own virtual environment) can be handed as they
are.

Example:

  >>> order = epoch_batches(5, 2, 3, seed=0)
  >>> [len(b) for b in order]
  [2, 2, 2]
  >>> len(set(order[0]) | set(order[1]))  # one epoch: no repeats
  4
"""

from __future__ import annotations

import numbers

import numpy as np


def epoch_batches(n: int, batch: int, steps: int,
                  seed: int) -> list[np.ndarray]:
  """Index arrays of ``steps`` full batches; a new permutation per epoch.

  Each epoch is a permutation of ``range(n)`` drawn from
  ``np.random.default_rng([seed, 1])``, cut into consecutive batches of
  ``batch``; the ``n mod batch`` indices left at an epoch's end are dropped
  (every batch is full) and the next epoch starts.

  Args:
    n: examples in the training set.
    batch: examples per batch, ``1 <= batch <= n``.
    steps: batches to return.
    seed: seed of the permutations.

  Returns:
    ``steps`` int arrays of shape ``(batch,)``.

  Raises:
    ValueError: ``batch`` outside ``[1, n]``, a negative ``steps``, a
      non-integer argument.
  """
  for name, value, low in (("n", n, 1), ("batch", batch, 1),
                           ("steps", steps, 0)):
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
        or value < low):
      raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
  if batch > n:
    raise ValueError(f"batch must be at most n = {n}, got {batch}")
  rng = np.random.default_rng([seed, 1])
  out, epoch = [], []
  while len(out) < steps:
    if len(epoch) < batch:
      epoch = list(rng.permutation(n))
    out.append(np.asarray(epoch[:batch]))
    epoch = epoch[batch:]
  return out
