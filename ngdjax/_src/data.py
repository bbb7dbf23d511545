"""Data for the experiments: sphere samples, scikit-learn digits, IDX files.

Conventions (docs/math.md): inputs are ``(n, d)`` with unit-norm rows (the
theory's setting), targets are always 2-D, ``(n, c)``, like the models'
outputs, so ``u - y`` never broadcasts an ``(n, 1)`` output against an
``(n,)`` target into an ``(n, n)`` matrix. Arrays come back as JAX arrays of
the default float dtype (float64 when ``jax_enable_x64`` is set); class
labels as numpy integer arrays.

* ``sphere``: ``n`` points uniform on ``S^{d-1}`` with Gaussian, sign or
  linear-teacher targets (Theorem 5's setting; C5, C8).
* ``digits``: scikit-learn's 8x8 digits (shipped inside scikit-learn, no
  download), two or more classes (default 4 vs 9 as in the appendix), ``+-1``
  or one-hot targets, optional random labels or a label-noise fraction on the
  training split (C9, C11, C12).
* ``read_idx`` / ``mnist``: the IDX format of MNIST, read from local files
  (optionally gzip-compressed); nothing is downloaded.

Example:

  >>> import ngdjax
  >>> x, y = ngdjax.data.sphere(n=8, d=3, seed=0)
  >>> x.shape, y.shape
  ((8, 3), (8, 1))
  >>> ds = ngdjax.data.digits(classes=(4, 9), seed=0)
  >>> ds.x_train.shape[1], ds.y_train.shape[1]
  (64, 1)
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ngdjax._src import checks
from ngdjax._src.typing import Array

SPHERE_TARGETS = ("gaussian", "sign", "linear")
TARGETS = ("pm1", "onehot")


def _float_dtype(dtype):
  return jnp.zeros(()).dtype if dtype is None else jnp.dtype(dtype)


def _key(seed) -> Array:
  if isinstance(seed, jax.Array) and jax.dtypes.issubdtype(
      seed.dtype, jax.dtypes.prng_key):
    return seed
  checks.check_scalar("seed", seed, nonnegative=True, integer=True)
  return jax.random.key(int(seed))


def _positive_int(name, value) -> int:
  checks.check_scalar(name, value, positive=True, integer=True)
  return int(value)


# --------------------------------------------------------------------------
# Uniform on the sphere.
# --------------------------------------------------------------------------


def sphere(n: int, d: int, *, seed=0, targets: str = "gaussian",
           out_dim: int = 1, dtype=None) -> tuple[Array, Array]:
  """``n`` points uniform on the unit sphere ``S^{d-1}``, with targets.

  Points are normalised standard Gaussians (rotation invariance makes them
  uniform), drawn with the non-partitionable threefry stream so that a seed
  means the same points under either ``jax_threefry_partitionable``. Two
  rows are parallel with probability zero, so ``G_inf`` is positive
  definite (Condition 1).

  Args:
    n: number of points.
    d: dimension (``d >= 2``).
    seed: an integer or a JAX key.
    targets: ``"gaussian"`` (``y ~ N(0, 1)`` i.i.d.), ``"sign"`` (uniform
      ``+-1``) or ``"linear"`` (``y = sqrt(d) x^T B`` with ``B`` ``(d, c)``
      random unit columns, so ``|y_i| = O(1)``).
    out_dim: number of target columns ``c``.
    dtype: float dtype; default JAX's default float.

  Returns:
    ``(x, y)``: ``(n, d)`` unit rows and ``(n, c)`` targets.
  """
  n = _positive_int("n", n)
  d = _positive_int("d", d)
  c = _positive_int("out_dim", out_dim)
  if d < 2:
    raise ValueError(f"d must be at least 2 (S^0 is two points), got {d}")
  if targets not in SPHERE_TARGETS:
    raise ValueError(f"targets must be one of {SPHERE_TARGETS}, got "
                     f"{targets!r}")
  # The classic threefry stream, whatever jax_threefry_partitionable says:
  # the same seed gives the same points under either setting, and on CPU it
  # compiles about 7x faster per shape (see ngdjax.experiment.runner).
  with jax.threefry_partitionable(False):
    return _sphere(_key(seed), n, d, c, targets, _float_dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _sphere(key, n, d, c, targets, dtype):
  # One compiled sampler per shape instead of one compilation per eager op.
  kx, ky = jax.random.split(key)
  x = jax.random.normal(kx, (n, d), dtype)
  x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
  if targets == "gaussian":
    y = jax.random.normal(ky, (n, c), dtype)
  elif targets == "sign":
    y = jnp.where(jax.random.bernoulli(ky, 0.5, (n, c)), 1.0, -1.0)
    y = y.astype(dtype)
  else:
    b = jax.random.normal(ky, (d, c), dtype)
    y = jnp.sqrt(float(d)) * x @ (b / jnp.linalg.norm(b, axis=0))
  return x, y


# --------------------------------------------------------------------------
# Classification data sets.
# --------------------------------------------------------------------------


class Dataset(NamedTuple):
  """A train/test split of a classification problem.

  Attributes:
    x_train: ``(n, d)`` unit-norm rows (unless ``normalize=False``).
    y_train: ``(n, c)`` targets built from ``labels_train`` (noisy/random
      labels included).
    x_test: ``(n_test, d)``.
    y_test: ``(n_test, c)`` targets from the true test labels.
    labels_train: ``(n,)`` class indices into ``classes`` used for training
      (after random labels or label noise).
    labels_test: ``(n_test,)`` true class indices.
    clean_labels_train: ``(n,)`` the true training class indices.
    classes: the original labels, in index order.
  """

  x_train: Array
  y_train: Array
  x_test: Array
  y_test: Array
  labels_train: np.ndarray
  labels_test: np.ndarray
  clean_labels_train: np.ndarray
  classes: tuple[int, ...]


def _targets(labels: np.ndarray, k: int, kind: str, dtype) -> Array:
  if kind == "pm1":
    # classes[0] -> +1, classes[1] -> -1.
    y = np.where(labels == 0, 1.0, -1.0)[:, None]
  else:
    y = np.eye(k)[labels]
  return jnp.asarray(y, dtype=dtype)


def _corrupt(labels: np.ndarray, k: int, rng: np.random.Generator,
             random_labels: bool, label_noise: float) -> np.ndarray:
  if random_labels:
    return rng.integers(0, k, size=labels.size)
  flips = int(round(label_noise * labels.size))
  if flips == 0:
    return labels.copy()
  noisy = labels.copy()
  idx = rng.choice(labels.size, size=flips, replace=False)
  # A uniformly chosen *other* class: exactly `flips` labels are wrong.
  noisy[idx] = (labels[idx] + rng.integers(1, k, size=flips)) % k
  return noisy


def _validate_options(classes, targets, label_noise, random_labels):
  classes = tuple(int(c) for c in classes)
  if len(classes) < 2 or len(set(classes)) != len(classes):
    raise ValueError(f"classes must hold at least two distinct labels, got "
                     f"{classes}")
  if targets not in TARGETS:
    raise ValueError(f"targets must be one of {TARGETS}, got {targets!r}")
  if targets == "pm1" and len(classes) != 2:
    raise ValueError(f'targets="pm1" needs exactly two classes, got '
                     f'{classes}; use targets="onehot"')
  checks.check_scalar("label_noise", label_noise, nonnegative=True)
  if label_noise > 1:
    raise ValueError(f"label_noise must be a fraction in [0, 1], got "
                     f"{label_noise}")
  if random_labels and label_noise:
    raise ValueError("random_labels and label_noise are exclusive (random "
                     "labels already replace every label)")
  return classes


def _prepare(train, test, classes, targets, normalize, seed, random_labels,
             label_noise, dtype) -> Dataset:
  """Relabels, corrupts the training labels and builds targets."""
  (xtr, ltr), (xte, lte) = train, test
  rng = np.random.default_rng([int(seed), 1])
  k = len(classes)
  index = {c: i for i, c in enumerate(classes)}
  ltr = np.array([index[int(v)] for v in ltr], dtype=np.int64)
  lte = np.array([index[int(v)] for v in lte], dtype=np.int64)
  noisy = _corrupt(ltr, k, rng, random_labels, label_noise)
  xtr = np.asarray(xtr, np.float64)
  xte = np.asarray(xte, np.float64).reshape(-1, xtr.shape[1])
  if normalize:
    for name, arr in (("images (train)", xtr), ("images (test)", xte)):
      if arr.size:
        checks.check_nonzero_rows(name, arr)
    xtr = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    if xte.size:
      xte = xte / np.linalg.norm(xte, axis=1, keepdims=True)
  dtype = _float_dtype(dtype)
  return Dataset(
      x_train=jnp.asarray(xtr, dtype),
      y_train=_targets(noisy, k, targets, dtype),
      x_test=jnp.asarray(xte, dtype),
      y_test=_targets(lte, k, targets, dtype),
      labels_train=noisy,
      labels_test=lte,
      clean_labels_train=ltr,
      classes=classes,
  )


def _select(images, labels, classes, name):
  labels = np.asarray(labels).reshape(-1)
  images = np.asarray(images).reshape(labels.size, -1)
  missing = [c for c in classes if not np.any(labels == c)]
  if missing:
    raise ValueError(f"classes {missing} do not occur in {name}")
  keep = np.isin(labels, classes)
  return images[keep], labels[keep]


def _subsample(images, labels, count, rng, name):
  if count is None:
    return images, labels
  count = _positive_int(name, count)
  if count > labels.size:
    raise ValueError(f"{name}={count} exceeds the {labels.size} examples "
                     "available")
  idx = np.sort(rng.choice(labels.size, size=count, replace=False))
  return images[idx], labels[idx]


def digits(classes: Sequence[int] = (4, 9), targets: str = "pm1", *,
           test_fraction: float = 0.25, seed: int = 0,
           random_labels: bool = False, label_noise: float = 0.0,
           n_train: int | None = None, normalize: bool = True,
           dtype=None) -> Dataset:
  """scikit-learn's 8x8 digits (1797 images, ``d = 64``), no download.

  The split is stratified and deterministic in ``seed``: a fraction
  ``test_fraction`` of each class goes to the test set. Random labels and
  label noise change the *training* labels only, so the test error measures
  how well the true labels are predicted (Zhang et al. 2017's protocol).

  Args:
    classes: labels to keep; index ``i`` of the targets is ``classes[i]``.
    targets: ``"pm1"`` (two classes; ``classes[0] -> +1``, ``classes[1] ->
      -1``; ``(n, 1)``) or ``"onehot"`` (``(n, k)``).
    test_fraction: fraction of each class held out, in ``[0, 1)``.
    seed: seed of the split, the subsample and the label corruption.
    random_labels: replace every training label by a uniform random class.
    label_noise: fraction of training labels replaced by a different class
      (exactly ``round(label_noise * n)`` of them).
    n_train: keep a random subset of this many training examples.
    normalize: scale rows to unit norm (the theory's setting).
    dtype: float dtype of ``x`` and ``y``.

  Returns:
    A ``Dataset``.
  """
  from sklearn.datasets import load_digits  # optional dependency

  classes = _validate_options(classes, targets, label_noise, random_labels)
  checks.check_scalar("test_fraction", test_fraction, nonnegative=True)
  if test_fraction >= 1:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
  checks.check_scalar("seed", seed, nonnegative=True, integer=True)
  bunch = load_digits()
  images, labels = _select(bunch.data, bunch.target, classes, "digits")
  rng = np.random.default_rng([int(seed), 0])
  train_idx, test_idx = [], []
  for c in classes:
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(test_fraction * idx.size))
    test_idx.append(idx[:n_test])
    train_idx.append(idx[n_test:])
  train_idx = np.sort(np.concatenate(train_idx))
  test_idx = np.sort(np.concatenate(test_idx))
  xtr, ltr = _subsample(images[train_idx], labels[train_idx], n_train, rng,
                        "n_train")
  return _prepare((xtr, ltr), (images[test_idx], labels[test_idx]), classes,
                  targets, normalize, seed, random_labels, label_noise, dtype)


# --------------------------------------------------------------------------
# IDX files (the MNIST format).
# --------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (gzip-compressed or not) into a numpy array.

  Format: two zero bytes, a type byte (``0x08`` uint8, ``0x09`` int8,
  ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), a
  byte with the number of dimensions ``k``, ``k`` big-endian uint32 sizes,
  then the data in C order, big-endian. Compression is detected from the
  gzip magic bytes, not the file name.

  Args:
    path: file path.

  Returns:
    Array of the stored shape, in native byte order.

  Raises:
    ValueError: naming the file, for a bad header or a size mismatch.
  """
  path = Path(path)
  if not path.is_file():
    raise ValueError(f"path {str(path)!r} is not a file")
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise ValueError(f"{path}: cannot be read: {e}") from e
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      # BadGzipFile is an OSError; a truncated stream raises EOFError.
      raise ValueError(
          f"{path}: corrupt or truncated gzip data ({type(e).__name__}: "
          f"{e}); download the file again"
      ) from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise ValueError(f"{path}: not an IDX file (the first two bytes must be "
                     "zero)")
  code, ndim = raw[2], raw[3]
  if code not in _IDX_DTYPES:
    raise ValueError(f"{path}: unknown IDX data type 0x{code:02x}")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path}: truncated IDX header")
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  dtype = _IDX_DTYPES[code]
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(
        f"{path}: IDX header promises shape {shape} ({expected} bytes of "
        f"data) but the file holds {len(raw) - header}"
    )
  data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
  return data.astype(dtype.newbyteorder("="))


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find(directory: Path, stem: str) -> Path:
  for name in (stem, stem + ".gz"):
    if (directory / name).is_file():
      return directory / name
  raise ValueError(f"directory {str(directory)!r} has no {stem}[.gz]; "
                   "download MNIST there first")


def mnist(directory: str | os.PathLike, classes: Sequence[int] = (4, 9), *,
          targets: str = "pm1", seed: int = 0, n_train: int | None = None,
          n_test: int | None = None, random_labels: bool = False,
          label_noise: float = 0.0, normalize: bool = True,
          dtype=None) -> Dataset:
  """MNIST (or any IDX data set with MNIST's file names) from a directory.

  Uses the files' own train/test split (``train-*`` and ``t10k-*``, each
  optionally ``.gz``); images are flattened to ``d = 784``. Options as in
  ``digits``; ``n_train`` / ``n_test`` take random subsets.
  """
  classes = _validate_options(classes, targets, label_noise, random_labels)
  checks.check_scalar("seed", seed, nonnegative=True, integer=True)
  directory = Path(directory)
  arrays = {k: read_idx(_find(directory, v)) for k, v in MNIST_FILES.items()}
  rng = np.random.default_rng([int(seed), 0])
  train = _select(arrays["train_images"], arrays["train_labels"], classes,
                  "the training labels")
  test = _select(arrays["test_images"], arrays["test_labels"], classes,
                 "the test labels")
  train = _subsample(*train, n_train, rng, "n_train")
  test = _subsample(*test, n_test, rng, "n_test")
  return _prepare(train, test, classes, targets, normalize, seed,
                  random_labels, label_noise, dtype)
