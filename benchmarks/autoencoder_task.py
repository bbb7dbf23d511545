"""The autoencoder task shared by ``train.py`` and ``kfac_jax_train.py``.

Plain numpy and ``jax.numpy`` only, so that both interpreters (ngdjax's and
the separate one with kfac-jax, where ngdjax is not importable) build the
same data and initialisation from the same seed. The batches come from
``ngdjax.experiment.epoch_batches``; ``train.py`` hands kfac-jax's run the
same index arrays in a file.
"""

import jax.numpy as jnp
import numpy as np

SIZES = (64, 128, 64, 16, 64, 128, 64)


def digits_01():
  """The 1797 scikit-learn digits, ``(1797, 64)`` float32 in ``[0, 1]``."""
  from sklearn.datasets import load_digits
  return load_digits().data.astype(np.float32) / 16.0


def init_params(seed):
  """Weights ``N(0, 1/fan_in)``, zero biases, as numpy float32 arrays."""
  rng = np.random.default_rng(seed)
  params = []
  for a, b in zip(SIZES[:-1], SIZES[1:], strict=True):
    w = rng.standard_normal((a, b)) / np.sqrt(a)
    params.append({"w": w.astype(np.float32), "b": np.zeros(b, np.float32)})
  return params


def apply(params, x):
  """tanh hidden layers, linear output: ``(n, 64) -> (n, 64)``."""
  h = x
  for i, p in enumerate(params):
    h = h @ p["w"] + p["b"]
    if i < len(params) - 1:
      h = jnp.tanh(h)
  return h

