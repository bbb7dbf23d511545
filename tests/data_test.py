"""Tests for ngdjax.data: sphere samples, digits, IDX files."""

import gzip
import struct

import jax
import numpy as np
import pytest

from ngdjax import data


def test_sphere_unit_rows_targets_and_determinism():
  x, y = data.sphere(50, 5, seed=3)
  assert x.shape == (50, 5) and y.shape == (50, 1)
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-12)
  x2, y2 = data.sphere(50, 5, seed=3)
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(y, y2)
  x3, _ = data.sphere(50, 5, seed=4)
  assert not np.allclose(x, x3)


@pytest.mark.parametrize("targets", data.SPHERE_TARGETS)
def test_sphere_target_kinds(targets):
  x, y = data.sphere(200, 4, seed=0, targets=targets, out_dim=2)
  assert y.shape == (200, 2)
  if targets == "sign":
    assert set(np.unique(y)) == {-1.0, 1.0}
  if targets == "linear":
    # y = sqrt(d) x^T b with a unit b: entries of size O(1), a linear map.
    coef, *_ = np.linalg.lstsq(np.asarray(x), np.asarray(y), rcond=None)
    np.testing.assert_allclose(np.asarray(x) @ coef, y, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(coef, axis=0), 2.0, rtol=1e-10)


def test_sphere_is_uniform_mean_and_second_moment():
  x, _ = data.sphere(4000, 3, seed=1)
  x = np.asarray(x)
  np.testing.assert_allclose(x.mean(0), 0.0, atol=0.05)
  np.testing.assert_allclose(x.T @ x / len(x), np.eye(3) / 3, atol=0.03)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0, d=3), "n must be positive"),
        (dict(n=5, d=1), "d must be at least 2"),
        (dict(n=5, d=3, targets="bogus"), "targets must be one of"),
        (dict(n=5, d=3, out_dim=1.5), "out_dim must be an integer"),
        (dict(n=5, d=3, seed=-1), "seed must be non-negative"),
    ],
)
def test_sphere_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.sphere(**kwargs)


def test_digits_split_normalisation_and_targets():
  ds = data.digits(classes=(4, 9), seed=0, test_fraction=0.25)
  n_tr, n_te = ds.x_train.shape[0], ds.x_test.shape[0]
  assert n_tr + n_te == 181 + 180  # all 4s and 9s of load_digits
  assert abs(n_te - 0.25 * 361) <= 2
  assert ds.x_train.shape[1] == 64 and ds.y_train.shape == (n_tr, 1)
  np.testing.assert_allclose(np.linalg.norm(ds.x_train, axis=1), 1.0)
  np.testing.assert_allclose(np.linalg.norm(ds.x_test, axis=1), 1.0)
  # classes[0] = 4 -> +1, classes[1] = 9 -> -1.
  np.testing.assert_array_equal(
      np.asarray(ds.y_train[:, 0]), np.where(ds.labels_train == 0, 1.0, -1.0)
  )
  again = data.digits(classes=(4, 9), seed=0)
  np.testing.assert_array_equal(ds.x_test, again.x_test)
  other = data.digits(classes=(4, 9), seed=1)
  assert not np.array_equal(np.asarray(ds.x_test), np.asarray(other.x_test))


def test_digits_onehot_multiclass_and_subsample():
  ds = data.digits(classes=(0, 1, 2), targets="onehot", n_train=30, seed=2)
  assert ds.y_train.shape == (30, 3)
  np.testing.assert_array_equal(np.asarray(ds.y_train).argmax(1),
                                ds.labels_train)
  assert ds.classes == (0, 1, 2)


def test_digits_label_noise_flips_exact_fraction_of_train_only():
  clean = data.digits(seed=0)
  noisy = data.digits(seed=0, label_noise=0.2)
  np.testing.assert_array_equal(noisy.clean_labels_train, clean.labels_train)
  wrong = np.sum(noisy.labels_train != noisy.clean_labels_train)
  assert wrong == round(0.2 * noisy.labels_train.size)
  np.testing.assert_array_equal(noisy.labels_test, clean.labels_test)
  np.testing.assert_array_equal(noisy.y_test, clean.y_test)


def test_digits_random_labels_are_uncorrelated():
  ds = data.digits(seed=0, random_labels=True, test_fraction=0.0)
  agree = np.mean(ds.labels_train == ds.clean_labels_train)
  assert 0.35 < agree < 0.65  # chance level for two classes
  assert ds.x_test.shape == (0, 64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(classes=(4,)), "classes must hold at least two"),
        (dict(classes=(4, 4)), "classes must hold at least two"),
        (dict(classes=(4, 11)), r"classes \[11\] do not occur"),
        (dict(classes=(1, 2, 3)), 'targets="pm1" needs exactly two'),
        (dict(targets="probs"), "targets must be one of"),
        (dict(label_noise=1.5), "label_noise must be a fraction"),
        (dict(label_noise=0.1, random_labels=True), "exclusive"),
        (dict(test_fraction=1.0), "test_fraction must be in"),
        (dict(n_train=10**6), "n_train=1000000 exceeds"),
    ],
)
def test_digits_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.digits(**kwargs)


def _write_idx(path, array, code, compress=False):
  """Writes the IDX header by hand (independent of the reader)."""
  header = bytes([0, 0, code, array.ndim]) + struct.pack(
      f">{array.ndim}I", *array.shape
  )
  big_endian = array.astype(array.dtype.newbyteorder(">"))
  payload = header + big_endian.tobytes()
  if compress:
    payload = gzip.compress(payload)
  path.write_bytes(payload)


@pytest.mark.parametrize(
    "dtype, code",
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
     (np.float32, 0x0D), (np.float64, 0x0E)],
)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, dtype, code, compress):
  rng = np.random.default_rng(0)
  array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
  path = tmp_path / "a.idx"
  _write_idx(path, array, code, compress)
  out = data.read_idx(path)
  assert out.shape == (3, 4, 5) and out.dtype == np.dtype(dtype)
  np.testing.assert_array_equal(out, array)


def test_read_idx_bad_files(tmp_path):
  bad = tmp_path / "bad"
  bad.write_bytes(b"\x01\x02\x08\x01")
  with pytest.raises(ValueError, match="not an IDX file"):
    data.read_idx(bad)
  short = tmp_path / "short"
  _write_idx(short, np.zeros((4,), np.uint8), 0x08)
  short.write_bytes(short.read_bytes()[:-1])
  with pytest.raises(ValueError, match="promises shape"):
    data.read_idx(short)
  with pytest.raises(ValueError, match="is not a file"):
    data.read_idx(tmp_path / "missing")


def test_mnist_from_idx_directory(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (("train", 40), ("t10k", 20)):
    images = rng.integers(1, 255, size=(n, 28, 28)).astype(np.uint8)
    labels = np.tile(np.arange(10, dtype=np.uint8), n // 10)
    _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images, 0x08,
               compress=True)
    _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels, 0x08)
  ds = data.mnist(tmp_path, classes=(4, 9), n_train=6)
  assert ds.x_train.shape == (6, 784) and ds.x_test.shape == (4, 784)
  np.testing.assert_allclose(np.linalg.norm(ds.x_train, axis=1), 1.0)
  with pytest.raises(ValueError, match="has no train-images"):
    data.mnist(tmp_path / "nowhere")


def test_sphere_samples_do_not_depend_on_threefry_flag():
  x1, _ = data.sphere(5, 3, seed=0)
  with jax.threefry_partitionable(True):
    x2, _ = data.sphere(5, 3, seed=0)
  np.testing.assert_array_equal(x1, x2)


@pytest.mark.parametrize("corrupt", ["truncated", "garbage", "bad_crc"])
def test_read_idx_corrupt_gzip_names_the_file(tmp_path, corrupt):
  # Issue 13 item 10: EOFError / BadGzipFile without the file name.
  path = tmp_path / "train-images-idx3-ubyte.gz"
  _write_idx(path, np.arange(60, dtype=np.uint8).reshape(3, 4, 5), 0x08,
             compress=True)
  raw = path.read_bytes()
  if corrupt == "truncated":
    raw = raw[: len(raw) // 2]
  elif corrupt == "garbage":
    raw = b"\x1f\x8b" + b"not gzip at all" * 4
  else:  # flip a byte of the CRC32 trailer
    raw = raw[:-8] + bytes([raw[-8] ^ 0xFF]) + raw[-7:]
  path.write_bytes(raw)
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz") as e:
    data.read_idx(path)
  assert "gzip" in str(e.value)
