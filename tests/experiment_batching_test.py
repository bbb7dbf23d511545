"""The mini-batch order (``ngdjax.experiment.batching``)."""

import numpy as np
import pytest

from ngdjax.experiment import batching


def _reference(n, batch, steps, seed):
  # Obviously correct: whole epochs of one permutation each, cut into
  # batches, the remainder of each epoch dropped.
  rng = np.random.default_rng([seed, 1])
  out = []
  while len(out) < steps:
    perm = rng.permutation(n)
    out += [perm[i:i + batch] for i in range(0, n - batch + 1, batch)]
  return out[:steps]


@pytest.mark.parametrize("n, batch, steps", [(10, 3, 8), (7, 7, 3),
                                             (9, 2, 0), (5, 1, 12)])
def test_epochs_are_permutations_cut_into_full_batches(n, batch, steps):
  order = batching.epoch_batches(n, batch, steps, seed=3)
  expected = _reference(n, batch, steps, seed=3)
  assert len(order) == steps
  for got, want in zip(order, expected, strict=True):
    np.testing.assert_array_equal(got, want)
  per_epoch = n // batch
  for start in range(0, steps - per_epoch + 1, per_epoch):
    epoch = np.concatenate(order[start:start + per_epoch])
    assert len(set(epoch.tolist())) == per_epoch * batch  # no repeats


def test_the_order_depends_on_the_seed_only():
  a = batching.epoch_batches(20, 4, 6, seed=0)
  b = batching.epoch_batches(20, 4, 6, seed=0)
  c = batching.epoch_batches(20, 4, 6, seed=1)
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=5, batch=6, steps=1), "batch"),
    (dict(n=5, batch=0, steps=1), "batch"),
    (dict(n=5, batch=2, steps=-1), "steps"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    batching.epoch_batches(seed=0, **kwargs)
