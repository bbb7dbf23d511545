"""Tests for embeddings' K-FAC blocks in vector form (``kfac_embed``).

References (float64): the one-hot shared-layer form the vector form
replaces (``kfac._ONE_HOT_EMBEDDINGS``), and ``diag(counts) (x) B^T B``
built from ``jax.jacrev`` gradients at the looked-up rows.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngdjax
from ngdjax._src.optim import kfac as kfac_lib
from ngdjax._src.optim import kfac_embed

VOCAB, WIDTH, TOKENS, CLASSES = 7, 3, 4, 2
# Tokens 3 and 6 appear in no batch, 5 only in the second; token 1 is
# repeated within the first example.
BATCH_1 = [[1, 0, 1, 2], [4, 4, 0, 2], [2, 1, 0, 4], [0, 0, 1, 2],
           [4, 2, 2, 1]]
BATCH_2 = [[5, 0, 1, 2], [4, 5, 0, 5], [2, 1, 1, 4], [0, 2, 1, 2],
           [1, 2, 5, 1]]


def _apply(p, x):  # x: (n, T) token ids stored as floats
  h = jnp.take(p["embed"], x.astype(jnp.int32), axis=0)  # (n, T, D)
  return jnp.tanh(h).reshape(h.shape[0], -1) @ p["out"]


def _problem():
  keys = jax.random.split(jax.random.key(3), 2)
  params = {"embed": jax.random.normal(keys[0], (VOCAB, WIDTH)),
            "out": jax.random.normal(keys[1], (TOKENS * WIDTH, CLASSES))}
  x1 = jnp.asarray(BATCH_1, jnp.float64)
  x2 = jnp.asarray(BATCH_2, jnp.float64)
  y1 = jnp.sin(jnp.arange(10.0)).reshape(5, CLASSES)
  y2 = jnp.cos(jnp.arange(10.0)).reshape(5, CLASSES)
  return params, (x1, y1), (x2, y2)


def _steps(make, params, batches, one_hot, monkeypatch):
  """Params and state after one step per batch, with the vector or the
  one-hot form of the embedding's block. The optimizer ``make()`` is built
  after the switch: JAX caches traces per function (``eval_shape`` of its
  ``init`` too)."""
  monkeypatch.setattr(kfac_lib, "_ONE_HOT_EMBEDDINGS", one_hot)
  opt = make()
  step = jax.jit(opt.step)
  state = opt.init(params)
  infos = []
  for x, y in batches:
    params, state, info = step(params, state, x, y)
    infos.append(info)
  return params, state, infos


def _assert_same(got, want):
  for k in got:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12,
                               err_msg=k)


FULL_BATCH = [
    dict(damping_split="pi"),
    dict(damping_split="pi", form="dual"),
    dict(damping_split="exact"),
    dict(damping_split="exact", form="dual"),
    dict(damping_split="pi", loss="softmax_cross_entropy",
         factor_damping=(0.3, 0.2)),
    # One example: n T = 4 rows < V = 7 (the D x D solve before the
    # scatter-add of rows; the others add first).
    dict(damping_split="pi", examples=1),
    dict(damping_split="exact", loss="softmax_cross_entropy",
         fisher="empirical", examples=1),
]


@pytest.mark.parametrize("kwargs", FULL_BATCH)
def test_full_batch_vector_form_equals_the_one_hot_form(kwargs, monkeypatch):
  params, b1, _ = _problem()
  kwargs = dict(kwargs)
  examples = kwargs.pop("examples", 5)
  b1 = (b1[0][:examples], b1[1][:examples])
  if kwargs.get("loss") == "softmax_cross_entropy":
    b1 = (b1[0], jnp.array([0, 1, 1, 0, 1])[:examples])

  def make():
    return ngdjax.kfac(_apply, 0.7, damping=0.2, **kwargs)

  got, _, info = _steps(make, params, [b1], False, monkeypatch)
  want, _, _ = _steps(make, params, [b1], True, monkeypatch)
  assert int(info[0]["cholesky_failed"]) == 0
  _assert_same(got, want)


def _jacobian_rows(params, x):
  """``B`` ``(n, c, T, D)``: d u[i, k] / d z[i, t] at the looked-up rows,
  from ``jax.jacrev`` of a perturbation added to them."""
  n = x.shape[0]
  ids = x.astype(jnp.int32)

  def out(eps):
    h = params["embed"][ids] + eps
    return jnp.tanh(h).reshape(n, -1) @ params["out"]

  s = jax.jacrev(out)(jnp.zeros((n, TOKENS, WIDTH)))  # (n, c, n, T, D)
  return np.asarray(jnp.einsum("ikitd->iktd", s))


def test_full_batch_pi_step_is_diag_counts_kron_btb(monkeypatch):
  # delta = m (diag(counts) + lam_A)^{-1} grad (B^T B + lam_B)^{-1}, m = n
  # T, lam_A = m pi sqrt(lam), lam_B = sqrt(lam) / pi, pi^2 = (1 / V) /
  # (tr(B^T B) / D); squared loss. Rows of the absent tokens 3, 5, 6 stay.
  params, (x, y), _ = _problem()
  lam, lr = 0.2, 0.7
  new, _, _ = _steps(lambda: ngdjax.kfac(_apply, lr, damping=lam), params,
                     [(x, y)], False, monkeypatch)
  grad = jax.grad(lambda p: 0.5 * jnp.sum((_apply(p, x) - y) ** 2))(params)
  b = _jacobian_rows(params, x).reshape(-1, WIDTH)
  m = x.size
  counts = np.bincount(np.asarray(x, int).ravel(), minlength=VOCAB)
  assert counts[1] == 5 and counts[3] == counts[5] == counts[6] == 0
  btb = b.T @ b
  pi = np.sqrt((1 / VOCAB) / (np.trace(btb) / WIDTH))
  lam_a, lam_b = m * pi * np.sqrt(lam), np.sqrt(lam) / pi
  want = m * np.asarray(grad["embed"]) / (counts + lam_a)[:, None]
  want = want @ np.linalg.inv(btb + lam_b * np.eye(WIDTH))
  np.testing.assert_allclose((params["embed"] - new["embed"]) / lr, want,
                             rtol=1e-10, atol=1e-12)
  np.testing.assert_array_equal(new["embed"][np.array([3, 5, 6])],
                                params["embed"][np.array([3, 5, 6])])


MINI_BATCH = [
    dict(factor_decay=0.6, inverse_every=2, inverse="eigh"),
    dict(factor_decay=0.6, inverse_every=2, inverse="eigh",
         damping_split="exact", factor_damping=(0.1, 0.0)),
    dict(factor_decay=0.6, inverse_every=2, inverse="cholesky"),
    dict(factor_decay=0.6, statistics_every=2, inverse="cholesky",
         factor_damping=(0.0, 0.3)),
    dict(fisher="monte_carlo", factor_decay=0.6, inverse_every=2,
         loss="softmax_cross_entropy"),
]


@pytest.mark.parametrize("kwargs", MINI_BATCH)
def test_mini_batch_vector_form_equals_the_one_hot_form(kwargs, monkeypatch):
  # Three steps over two batches: the second batch's token 5 is absent
  # from the factors of the refresh before it (inverse_every=2) or from the
  # statistics (statistics_every=2), so its row gets the damping only.
  params, b1, b2 = _problem()
  if kwargs.get("loss") == "softmax_cross_entropy":
    b1 = (b1[0], jnp.array([0, 1, 1, 0, 1]))
    b2 = (b2[0], jnp.array([1, 1, 0, 0, 1]))
  def make():
    return ngdjax.kfac(_apply, 0.7, damping=0.2, example_inputs=b1[0],
                       **kwargs)

  got, state, infos = _steps(make, params, [b1, b2, b1], False, monkeypatch)
  want, ref_state, _ = _steps(make, params, [b1, b2, b1], True,
                              monkeypatch)
  assert all(int(i["cholesky_failed"]) == 0 for i in infos)
  _assert_same(got, want)
  embed = state.curvature[0]
  assert isinstance(embed, (kfac_embed.EmbedKFACFactors,
                            kfac_embed.EmbedKFACInverses))
  np.testing.assert_allclose(embed.inputs_cov,
                             jnp.diagonal(ref_state.curvature[0].inputs_cov[0]),
                             rtol=1e-12, atol=1e-14)
  assert embed.inputs_cov.shape == (VOCAB,)
  assert float(embed.inputs_cov[3]) == 0  # in no batch
  if "statistics_every" not in kwargs:  # (else batch 2 was never counted)
    assert float(embed.inputs_cov[5]) > 0


def test_reduce_keeps_the_one_hot_form():
  params, (x, y), _ = _problem()
  opt = ngdjax.kfac(_apply, 0.7, damping=0.2, weight_sharing="reduce",
                    factor_decay=0.5, example_inputs=x)
  _, state, _ = jax.jit(opt.step)(params, opt.init(params), x, y)
  assert state.curvature[0].inputs_cov.shape == (1, VOCAB, VOCAB)


def _dims(text):
  """Every array shape in a StableHLO (``tensor<4x8xf32>``) or HLO
  (``f32[4,8]``) module text."""
  shapes = [tuple(int(v) for v in s.split("x") if v)
            for s in re.findall(r"tensor<((?:\d+x)+)[a-z]", text)]
  hlo = r"\b(?:[a-z]+\d+|pred)\[(\d+(?:,\d+)*)\]"
  shapes += [tuple(int(v) for v in s.split(","))
             for s in re.findall(hlo, text)]
  return shapes


def _large(shapes, vocab, width):
  """Shapes with two dimensions >= ``vocab`` or more entries than the
  ``(vocab, width)`` table."""
  return {s for s in shapes
          if sum(d >= vocab for d in s) >= 2 or np.prod(s) > vocab * width}


@pytest.mark.parametrize("mode", ["full", "mini"])
def test_no_vocabulary_sized_square_or_one_hot_in_the_step(mode,
                                                            monkeypatch):
  # V = 5000, n T = 64: the one-hot (64, V) and V x V factors would show;
  # lowered (StableHLO) and compiled (HLO) text, shapes only.
  vocab, width, tokens, n = 5000, 4, 4, 16

  def apply(p, x):
    h = jnp.take(p["embed"], x.astype(jnp.int32), axis=0)
    return jnp.mean(h, axis=1) @ p["out"]

  params = {"embed": jax.ShapeDtypeStruct((vocab, width), jnp.float32),
            "out": jax.ShapeDtypeStruct((width, 3), jnp.float32)}
  x = jax.ShapeDtypeStruct((n, tokens), jnp.float32)
  y = jax.ShapeDtypeStruct((n,), jnp.int32)
  kwargs = dict(loss="softmax_cross_entropy")
  if mode == "mini":
    kwargs.update(fisher="monte_carlo", factor_decay=0.95, inverse_every=2,
                  example_inputs=jnp.zeros((n, tokens), jnp.float32))

  def lowered(one_hot):
    monkeypatch.setattr(kfac_lib, "_ONE_HOT_EMBEDDINGS", one_hot)
    opt = ngdjax.kfac(apply, 0.1, damping=1.0, **kwargs)
    state = jax.eval_shape(opt.init, params)
    return jax.jit(opt.step).lower(params, state, x, y)

  step = lowered(False)
  for text in (step.as_text(), step.compile().as_text()):
    shapes = _dims(text)
    assert (vocab, width) in shapes, "no table found: vacuous"
    assert not _large(shapes, vocab, width), _large(shapes, vocab, width)
  # The check sees the one-hot form's arrays.
  assert _large(_dims(lowered(True).as_text()), vocab, width)
