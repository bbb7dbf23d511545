"""Linear-algebra helpers against numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from ngdjax._src import linalg


@pytest.mark.parametrize("rows", [5, 515, 1030])
def test_self_outer_equals_matmul(rows):
  a = np.random.default_rng(rows).standard_normal((rows, 7))
  np.testing.assert_allclose(linalg.self_outer(jnp.asarray(a)), a @ a.T,
                             atol=1e-12)


def test_normalize_rows_and_zero_rows():
  x = np.array([[3.0, 4.0], [0.0, -2.0]])
  np.testing.assert_allclose(linalg.normalize_rows(x),
                             [[0.6, 0.8], [0.0, -1.0]])
  with pytest.raises(ValueError, match="x has 1 row.* of zero norm"):
    linalg.normalize_rows(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_lambda_min_symmetrises():
  g = np.array([[2.0, 1.0], [1.0 + 1e-12, 3.0]])
  np.testing.assert_allclose(linalg.lambda_min(g),
                             np.linalg.eigvalsh(0.5 * (g + g.T))[0])
