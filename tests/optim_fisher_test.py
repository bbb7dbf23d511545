"""NGD and K-FAC with the Fisher of softmax cross-entropy (docs/math.md,
"The Fisher of cross-entropy").

Every step is compared with a dense ``p x p`` reference built from the
definitions: ``J`` by ``jax.jacrev``, the output Hessian by ``jax.hessian``
of the per-example loss, per-example gradients by ``jax.grad``; never from
the library's closed forms.
"""

import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.flatten_util import ravel_pytree

import ngdjax
from ngdjax._src import gram_forms, structure
from ngdjax.optim import gd, kfac, ngd, ngd_preconditioner

N, D, C = 5, 3, 3
MODEL = ngdjax.mlp([4], out_dim=C, activation="tanh")


def _problem(seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda k: MODEL.init(k, D), jax.random.key(0))
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(scale * rng.standard_normal(s.shape)), shapes)
  x = jnp.asarray(rng.standard_normal((N, D)))
  labels = jnp.asarray(rng.integers(0, C, N))
  return params, x, labels


def _sampled(u):
  """The labels the step draws: ``core`` splits ``key(0)`` once per step."""
  sub = jax.random.split(jax.random.key(0))[1]
  return jax.random.categorical(sub, u, axis=-1)


@jax.jit
def _dense(params, x, labels):
  """The dense pieces of a step's reference."""
  flat, unravel = ravel_pytree(params)
  out = lambda f: MODEL.apply(unravel(f), x)  # noqa: E731
  u = out(flat)
  jac = jax.jacrev(lambda f: out(f).reshape(-1))(flat)  # (N c, p)

  def example_loss(ui, yi):
    return -jax.nn.log_softmax(ui)[yi]

  g = jax.vmap(jax.grad(example_loss))(u, labels)  # (n, c)
  hess = jax.vmap(jax.hessian(example_loss))(u, labels)  # (n, c, c)
  s = jax.vmap(jax.grad(example_loss))(u, _sampled(u))
  return jac, u, g, hess, s


def _reference(fisher, jac, g, hess, s, lr, lam):
  jac, g, hess, s = map(np.asarray, (jac, g, hess, s))
  p = jac.shape[1]
  jb = jac.reshape(N, C, p)
  grad = np.einsum("ik,ikp->p", g, jb)
  if fisher == "true":
    f = np.einsum("ikp,ikl,ilq->pq", jb, hess, jb)
  elif fisher == "empirical":
    rows = np.einsum("ik,ikp->ip", g, jb)
    f = rows.T @ rows
  else:
    rows = np.einsum("ik,ikp->ip", s, jb)
    f = rows.T @ rows
  return -lr * np.linalg.solve(f + lam * np.eye(p), grad)


class NGDReferenceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      (f"{fisher}_{solver}", fisher, solver, lam)
      for fisher in ("true", "empirical", "monte_carlo")
      for solver, lam in (("cholesky", 1e-3), ("cg", 0.3)))
  def test_ngd_fisher_matches_dense(self, fisher, solver, lam):
    params, x, labels = _problem(seed=1, scale=1.5)
    opt = ngd(MODEL, 0.7, damping=lam, loss="softmax_cross_entropy",
              fisher=fisher, solver=solver, cg_tol=1e-14)
    new, _, info = self.variant(
        lambda p, a, b: opt.step(p, opt.init(p), a, b))(params, x, labels)
    delta = ravel_pytree(new)[0] - ravel_pytree(params)[0]
    jac, u, g, hess, s = _dense(params, x, labels)
    ref = _reference(fisher, jac, g, hess, s, 0.7, lam)
    scale = np.linalg.norm(ref)
    assert np.linalg.norm(np.asarray(delta) - ref) <= 1e-8 * scale
    np.testing.assert_allclose(
        info["loss"], -np.sum(jax.nn.log_softmax(u)[np.arange(N), labels]),
        rtol=1e-12)
    assert int(info["diverged"]) == 0


def test_one_hot_and_labels_agree_and_check():
  params, x, labels = _problem(seed=2)
  opt = ngd(MODEL, 1.0, damping=1e-2, loss="softmax_cross_entropy")
  state = opt.init(params)
  a = opt.step(params, state, x, labels)[0]
  b = opt.step(params, state, x, jax.nn.one_hot(labels, C))[0]
  chex.assert_trees_all_close(a, b, rtol=1e-12)
  with pytest.raises(ValueError, match="y holds class labels"):
    opt.step(params, state, x, labels.at[0].set(C))
  with pytest.raises(ValueError, match="y has 4 rows"):
    opt.step(params, state, x, labels[:4])
  with pytest.raises(ValueError, match=r"y: .*integer class labels.*astype"):
    opt.step(params, state, x, labels.astype(float))
  smooth = 0.9 * jax.nn.one_hot(labels, C) + 0.1 / C  # label smoothing: ok
  opt.step(params, state, x, smooth.astype(jnp.float32))
  with pytest.raises(ValueError, match=r"y must hold class probabilit.*"
                     r"row 1 sums to 1\.5"):
    opt.step(params, state, x, smooth.at[1, 0].add(0.5))
  with pytest.raises(ValueError, match=r"y must hold class probabilit.*"
                     r"row 0 has a negative entry"):
    opt.step(params, state, x, smooth.at[0].set(jnp.array([1.5, -0.5, 0.0])))
  for make in (kfac, gd):
    other = make(MODEL, 0.5, loss="softmax_cross_entropy")
    with pytest.raises(ValueError, match="do not sum to 1"):
      other.step(params, other.init(params), x, 2.0 * smooth)
  with pytest.raises(ValueError, match="fisher"):
    ngd(MODEL, 1.0, fisher="exact")
  with pytest.raises(ValueError, match="damping must be positive"):
    ngd(MODEL, 1.0, loss="softmax_cross_entropy", fisher="monte_carlo")
  with pytest.raises(ValueError, match="sampler"):
    ngd(MODEL, 1.0, damping=1.0, loss="squared_log_cosh",
        fisher="monte_carlo")


def test_saturated_softmax_gives_a_finite_step():
  """Logits far apart: probabilities below float32's smallest normal."""
  params, x, labels = _problem(seed=3, scale=40.0)
  params = jax.tree_util.tree_map(lambda t: t.astype(jnp.float32), params)
  opt = ngd(MODEL, 1.0, damping=1e-3, loss="softmax_cross_entropy")
  new, _, info = jax.jit(opt.step)(params, opt.init(params),
                                   x.astype(jnp.float32), labels)
  assert all(bool(jnp.all(jnp.isfinite(t)))
             for t in jax.tree_util.tree_leaves(new))
  assert int(info["update_skipped"]) == 0


def test_ngd_preconditioner_with_the_fisher_equals_ngd():
  params, x, labels = _problem(seed=4)
  import optax

  tx = optax.chain(
      ngd_preconditioner(MODEL, damping=0.1, loss="softmax_cross_entropy",
                         fisher="monte_carlo"), optax.sgd(0.5))
  opt = ngd(MODEL, 0.5, damping=0.1, loss="softmax_cross_entropy",
            fisher="monte_carlo")
  updates, _ = tx.update(params, tx.init(params), params, x=x, y=labels)
  new = opt.step(params, opt.init(params), x, labels)[0]
  steps = jax.tree_util.tree_map(jnp.subtract, new, params)
  chex.assert_trees_all_close(updates, steps, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------
# K-FAC.
# --------------------------------------------------------------------------


@jax.jit
def _kfac_pieces(params, x, labels):
  mats = MODEL.to_layer_matrices(params)

  def loss(ms):
    u = MODEL.apply(MODEL.from_layer_matrices(ms), x)
    return -jnp.sum(jax.nn.log_softmax(u)[jnp.arange(N), labels])

  u = MODEL.apply(params, x)
  hess = jax.vmap(jax.hessian(lambda ui, yi: -jax.nn.log_softmax(ui)[yi]))(
      u, labels)
  s = jax.vmap(jax.grad(lambda ui, yi: -jax.nn.log_softmax(ui)[yi]))(
      u, _sampled(u))
  return mats, jax.grad(loss)(mats), MODEL.layer_factors(params, x), hess, s


def _kfac_reference(params, x, labels, lr, lam, split, fisher):
  """Block-diagonal ``-eta (F_l + damping)^{-1} grad_l``, explicit kron."""
  mats, grads, factors, hess, s = map(
      lambda t: jax.tree_util.tree_map(np.asarray, t),
      _kfac_pieces(params, x, labels))
  deltas = []
  for f, g in zip(factors, grads, strict=True):
    a, b = np.asarray(f.inputs), np.asarray(f.output_grads)
    fa = a.T @ a
    if fisher == "true":
      fb = np.einsum("ikb,ikl,ilc->bc", b, hess, b)
    else:
      rows = np.einsum("ik,ikb->ib", s, b)
      fb = rows.T @ rows
    if split == "pi":
      pi = np.sqrt((np.trace(fa) / a.size) / (np.trace(fb) / len(fb)))
      fa = fa + N * pi * np.sqrt(lam) * np.eye(len(fa))
      fb = fb + np.sqrt(lam) / pi * np.eye(len(fb))
      f_kfac = np.kron(fa, fb) / N
    else:
      f_kfac = np.kron(fa, fb) / N + lam * np.eye(len(fa) * len(fb))
    deltas.append(-lr * np.linalg.solve(f_kfac, np.ravel(g)).reshape(g.shape))
  return deltas


class KFACReferenceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(
      ("true_pi", "true", "pi", {}),
      ("true_exact_dual", "true", "exact", {"form": "dual"}),
      # Mini-batch mode, one batch.
      ("true_pi_no_decay", "true", "pi", {"factor_decay": 0.0}),
      ("true_exact_inverse_every_3", "true", "exact", {"inverse_every": 3}),
      ("monte_carlo_pi", "monte_carlo", "pi", {}),
      ("monte_carlo_exact", "monte_carlo", "exact", {}))
  def test_kfac_cross_entropy_matches_explicit_kronecker(self, fisher, split,
                                                         kwargs):
    params, x, labels = _problem(seed=5)
    lam, lr = 0.05, 0.6
    opt = kfac(MODEL, lr, damping=lam, loss="softmax_cross_entropy",
               fisher=fisher, damping_split=split, **kwargs)
    new, _, info = self.variant(opt.step)(params, opt.init(params), x,
                                          labels)
    ref = _kfac_reference(params, x, labels, lr, lam, split, fisher)
    old = MODEL.to_layer_matrices(params)
    for n_mat, o_mat, r in zip(MODEL.to_layer_matrices(new), old, ref,
                               strict=True):
      np.testing.assert_allclose(n_mat - o_mat, r, rtol=1e-8, atol=1e-11)
    assert int(info["cholesky_failed"]) == 0


def _weighted_mean(mats, decay):
  """``sum_j decay^(k-1-j) M_j / sum_j decay^(k-1-j)`` over ``j < k``."""
  weights = decay ** np.arange(len(mats) - 1, -1, -1.0)
  return sum(w * m for w, m in zip(weights, mats, strict=True)) / sum(weights)


def test_kfac_running_averages_and_inverse_refresh():
  params, x, labels = _problem(seed=6)
  decay = 0.75
  opt = kfac(MODEL, 0.3, damping=0.1, loss="softmax_cross_entropy",
             factor_decay=decay, inverse_every=2)
  step = jax.jit(opt.step)
  state = opt.init(params)
  batches = [(x, labels), (x[::-1] * 0.5, labels[::-1]), (x + 0.1, labels)]
  covs, states, p = [], [], params
  for xb, yb in batches:
    fac = MODEL.layer_factors(p, xb)[0]
    covs.append(np.asarray(fac.inputs.T @ fac.inputs) / N)
    p, state, _ = step(p, state, xb, yb)
    states.append(state)
  for k, state_k in enumerate(states):
    np.testing.assert_allclose(state_k.curvature[0].inputs_cov,
                               _weighted_mean(covs[:k + 1], decay),
                               rtol=1e-12)
  # Eigendecompositions at steps 0 and 2 only.
  e0, e1, e2 = (s.curvature[0].inputs_eigvals for s in states)
  np.testing.assert_array_equal(e0, e1)
  np.testing.assert_allclose(
      e2, np.linalg.eigvalsh(np.asarray(states[2].curvature[0].inputs_cov)),
      rtol=1e-10, atol=1e-14)
  assert not np.allclose(e1, e2)


def _pi_damped_step(fa, fb, g, lam, lr):
  """``-lr (N (A + pi delta I) kron (B + delta / pi I))^{-1} g``, delta =
  sqrt(lam / N): the running-average K-FAC step with the pi split."""
  pi = np.sqrt((np.trace(fa) / len(fa)) / (np.trace(fb) / len(fb)))
  delta = np.sqrt(lam / N)
  f_kfac = N * np.kron(fa + pi * delta * np.eye(len(fa)),
                       fb + delta / pi * np.eye(len(fb)))
  return -lr * np.linalg.solve(f_kfac, np.ravel(g)).reshape(g.shape)


def _batch_factors(params, x, labels):
  """Per-example ``(A^T A / n, B^T H B / n)`` per layer, from definitions."""
  u = MODEL.apply(params, x)
  hess = jax.vmap(jax.hessian(lambda ui, yi: -jax.nn.log_softmax(ui)[yi]))(
      u, labels)
  out = []
  for f in MODEL.layer_factors(params, x):
    a, b = np.asarray(f.inputs), np.asarray(f.output_grads)
    out.append((a.T @ a / N,
                np.einsum("ikb,ikl,ilc->bc", b, np.asarray(hess), b) / N))
  return out


@pytest.mark.parametrize("every,inverse",
                         [(1, "eigh"), (2, "eigh"), (2, "cholesky")])
def test_kfac_statistics_every_matches_hand_computation(every, inverse):
  # Factor statistics at steps 0, T, 2T, ... only (each update one term of
  # the weighted mean), eigendecompositions every step; each step's update
  # against an explicit Kronecker product of the hand-computed averages with the
  # pi-split damping: n (A~ + pi delta) (x) (B~ + delta / pi),
  # delta = sqrt(lam / n).
  params, x, labels = _problem(seed=8)
  decay, lam, lr = 0.75, 0.05, 0.3
  opt = kfac(MODEL, lr, damping=lam, loss="softmax_cross_entropy",
             factor_decay=decay, statistics_every=every, inverse=inverse)
  step = jax.jit(opt.step)
  state, p = opt.init(params), params
  batches = [(x, labels), (x[::-1] * 0.5, labels[::-1]),
             (x + 0.1, (labels + 1) % C)]
  seen = []  # the batch factors of every statistics update so far
  for k, (xb, yb) in enumerate(batches):
    if k % every == 0:
      seen.append(_batch_factors(p, xb, yb))
    avg = [(_weighted_mean([f[layer][0] for f in seen], decay),
            _weighted_mean([f[layer][1] for f in seen], decay))
           for layer in range(len(seen[0]))]
    _, grads, _, _, _ = _kfac_pieces(p, xb, yb)
    new, state, info = step(p, state, xb, yb)
    for (fa, fb), g, cur, old, fac in zip(
        avg, grads, MODEL.to_layer_matrices(new),
        MODEL.to_layer_matrices(p), state.curvature, strict=True):
      np.testing.assert_allclose(fac.inputs_cov, fa, rtol=1e-12, atol=1e-15)
      np.testing.assert_allclose(fac.grads_cov, fb, rtol=1e-12, atol=1e-15)
      np.testing.assert_allclose(np.asarray(cur - old),
                                 _pi_damped_step(fa, fb, g, lam, lr),
                                 rtol=1e-8, atol=1e-12)
    assert int(info["cholesky_failed"]) == 0
    p = new


def test_kfac_cholesky_inverses_keep_the_refresh_damping():
  # inverse="cholesky" with a damping schedule and a refresh every 2 steps:
  # step 1 reuses the inverses of step 0, damped with lam(0), where "eigh"
  # applies lam(1) to the cached eigenvalues; both against explicit kron.
  params, x, labels = _problem(seed=10)
  lr = 0.3

  def lam(k):
    return 0.05 * (1.0 + k)

  batches = [(x, labels), (x * 0.7, labels[::-1])]
  for inverse in ("eigh", "cholesky"):
    opt = kfac(MODEL, lr, damping=lam, loss="softmax_cross_entropy",
               factor_decay=0.0, inverse_every=2, inverse=inverse)
    step = jax.jit(opt.step)
    state, p = opt.init(params), params
    avg = _batch_factors(p, *batches[0])
    for k, (xb, yb) in enumerate(batches):
      _, grads, _, _, _ = _kfac_pieces(p, xb, yb)
      new, state, info = step(p, state, xb, yb)
      used = lam(0) if inverse == "cholesky" else lam(k)
      for (fa, fb), g, cur, old in zip(
          avg, grads, MODEL.to_layer_matrices(new),
          MODEL.to_layer_matrices(p), strict=True):
        np.testing.assert_allclose(np.asarray(cur - old),
                                   _pi_damped_step(fa, fb, g, used, lr),
                                   rtol=1e-8, atol=1e-12)
      assert int(info["cholesky_failed"]) == 0
      p = new


def test_kfac_cholesky_inverse_falls_back_on_a_singular_factor():
  # Undamped, the output layer's factor avg H_i is singular (H_i 1 = 0):
  # the Cholesky refresh falls back to the pseudo-inverse, counted, and the
  # step equals the eigendecomposition path's.
  params, x, labels = _problem(seed=11)
  news = []
  for inverse in ("eigh", "cholesky"):
    opt = kfac(MODEL, 0.3, damping=0.0, loss="softmax_cross_entropy",
               factor_decay=0.0, inverse=inverse)
    new, _, info = jax.jit(opt.step)(params, opt.init(params), x, labels)
    assert int(info["cholesky_failed"]) == (inverse == "cholesky")
    assert int(info["update_skipped"]) == 0
    news.append(jax.tree_util.tree_leaves(new))
  for a, b in zip(*news, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("fisher", ["true", "empirical"])
def test_kfac_unmatched_leaf_gets_its_fisher_block(fisher):
  # A bare apply with a leaf outside any layer (an output scale, squared:
  # a plain scale would be an elementwise layer with a Kronecker block):
  # its block is the exact damped Fisher of the loss, J_s^T H J_s (true)
  # or sum_i (J_s,i . g_i)^2 (empirical), not the squared loss's J_s^T J_s.
  params, x, labels = _problem(seed=4)
  full = {"mlp": params, "scale": jnp.asarray(1.3)}

  def apply(p, xx):
    return p["scale"] ** 2 * MODEL.apply(p["mlp"], xx)

  lam, lr = 0.3, 0.7
  opt = kfac(apply, lr, damping=lam, loss="softmax_cross_entropy",
             fisher=fisher)
  new, _, info = jax.jit(opt.step)(full, opt.init(full), x, labels)
  u = apply(full, x)
  js = np.asarray(jax.jacfwd(
      lambda sc: apply({"mlp": params, "scale": sc}, x))(full["scale"]))
  g = np.asarray(jax.vmap(jax.grad(
      lambda ui, yi: -jax.nn.log_softmax(ui)[yi]))(u, labels))
  grad = np.sum(js * g)
  if fisher == "true":
    hess = np.asarray(jax.vmap(jax.hessian(
        lambda ui, yi: -jax.nn.log_softmax(ui)[yi]))(u, labels))
    curvature = np.einsum("ik,ikl,il->", js, hess, js)
  else:
    curvature = np.sum(np.sum(js * g, axis=1) ** 2)
  np.testing.assert_allclose(new["scale"] - full["scale"],
                             -lr * grad / (curvature + lam), rtol=1e-10)
  assert int(info["cholesky_failed"]) == 0


@pytest.mark.parametrize("fisher", ["true", "empirical", "monte_carlo"])
@pytest.mark.parametrize("bare,kwargs", [
    (True, {}),
    (False, {"gram_method": "jacobian"}),
    (False, {"chunk_size": 2}),
    (True, {"solver": "cg", "cg_tol": 1e-14, "gram_method": "jacobian"}),
    (False, {"solver": "cg", "cg_tol": 1e-14, "chunk_size": 2}),
])
def test_ngd_fisher_every_gram_path_matches_dense(fisher, bare, kwargs):
  # The kernels from an explicit N x N Gram, blocked Gram-vector products
  # and a bare apply function (no layer factors), against the dense p x p
  # reference.
  params, x, labels = _problem(seed=1, scale=1.5)
  model = (lambda p, xx: MODEL.apply(p, xx)) if bare else MODEL
  lam = 0.3
  opt = ngd(model, 0.7, damping=lam, loss="softmax_cross_entropy",
            fisher=fisher, **kwargs)
  new, _, _ = jax.jit(opt.step)(params, opt.init(params), x, labels)
  delta = ravel_pytree(new)[0] - ravel_pytree(params)[0]
  jac, _, g, hess, s = _dense(params, x, labels)
  ref = _reference(fisher, jac, g, hess, s, 0.7, lam)
  assert np.linalg.norm(np.asarray(delta) - ref) <= 1e-9 * np.linalg.norm(ref)


def test_kfac_bad_settings_raise():
  with pytest.raises(ValueError, match="factor_decay"):
    kfac(MODEL, 1.0, factor_decay=1.0)
  with pytest.raises(ValueError, match="inverse_every"):
    kfac(MODEL, 1.0, inverse_every=0)
  with pytest.raises(ValueError, match="statistics_every"):
    kfac(MODEL, 1.0, statistics_every=1.5)
  with pytest.raises(ValueError, match="inverse"):
    kfac(MODEL, 1.0, inverse="qr")
  with pytest.raises(ValueError, match="damping_split"):
    kfac(MODEL, 1.0, inverse="cholesky", damping_split="exact")
  with pytest.raises(ValueError, match="fisher"):
    kfac(MODEL, 1.0, fisher="sampled")


@pytest.mark.parametrize("extra", [{}, {"statistics_every": 2,
                                       "inverse": "cholesky"}])
def test_kfac_preconditioner_equals_kfac_over_steps(extra):
  import optax

  from ngdjax.optim import kfac_preconditioner

  params, x, labels = _problem(seed=7)
  settings = dict(damping=0.05, loss="softmax_cross_entropy",
                  factor_decay=0.9, inverse_every=2, **extra)
  tx = optax.chain(kfac_preconditioner(MODEL, **settings), optax.sgd(0.4))
  opt = kfac(MODEL, 0.4, **settings)
  p_tx, s_tx, p, s = params, tx.init(params), params, opt.init(params)
  for k in range(3):
    xb = x * (1 + 0.1 * k)
    updates, s_tx = tx.update(params, s_tx, p_tx, x=xb, y=labels)
    p_tx = optax.apply_updates(p_tx, updates)
    p, s, _ = opt.step(p, s, xb, labels)
  chex.assert_trees_all_close(p_tx, p, rtol=1e-10, atol=1e-13)
  assert int(s_tx[0].info["cholesky_failed"]) == 0


@pytest.mark.parametrize("rows_per_example", [1, C])
def test_row_gram_matches_dense_jacobian(rows_per_example):
  # Kernels of the empirical / Monte Carlo (one row per example) and true
  # (S, c rows) Fisher from contracted layer factors, against Gamma J J^T
  # Gamma^T from jax.jacrev; 200 examples x 3 rows crosses
  # linalg.self_outer's blocked threshold (512 rows) for r = c.
  rng = np.random.default_rng(3)
  n = 200
  params, _, _ = _problem(seed=3)
  x = jnp.asarray(rng.standard_normal((n, D)))
  rows = jnp.asarray(rng.standard_normal((n, C, rows_per_example)))
  flat, unravel = ravel_pytree(params)
  jac = jax.jacrev(
      lambda f: MODEL.apply(unravel(f), x).reshape(-1))(flat)  # (n c, p)
  gamma_j = np.einsum("ikr,ikp->irp", np.asarray(rows),
                      np.asarray(jac).reshape(n, C, -1))
  gamma_j = gamma_j.reshape(n * rows_per_example, -1)
  ref = gamma_j @ gamma_j.T
  st = structure.model_structure(MODEL, params, x)
  got = np.asarray(gram_forms.row_gram(st, params, x, rows))
  np.testing.assert_allclose(got, ref, rtol=1e-10,
                             atol=1e-12 * np.abs(ref).max())


@pytest.mark.slow
def test_readme_classification_snippet_runs(capsys):
  # The README's snippet as written: NGD and K-FAC (as an optax chain with
  # updates=None) each reach 80 % test accuracy on digits in 20 batches.
  text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
  start = text.index("### Classification")
  (snippet,) = re.findall(r"```python\n(.*?)```",
                          text[start:text.index("\n### ", start + 1)], re.S)
  exec(compile(snippet, "README.md", "exec"), {})  # noqa: S102
  accs = [float(a) for a in re.findall(r"(?:NGD|K-FAC) ([0-9.]+)",
                                       capsys.readouterr().out)]
  assert len(accs) == 2 and min(accs) > 0.8


@pytest.mark.parametrize("fisher,solver", [
    ("empirical", "cholesky"),
    pytest.param("monte_carlo", "cholesky", marks=pytest.mark.slow),
    ("monte_carlo", "cg")])
def test_ngd_fisher_of_a_flax_model_is_structured_and_exact(
    fisher, solver, monkeypatch):
  # A flax model's Structure serves the row Gram Gamma G Gamma^T (Cholesky),
  # as ngdjax.mlp's factors do; checked against the dense p x p reference.
  nn = pytest.importorskip("flax.linen")

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, z):
      return nn.Dense(C)(jnp.tanh(nn.Dense(4)(z)))

  _, x, labels = _problem(seed=2)
  params = jax.tree_util.tree_map(
      lambda a: 1.5 * a.astype(jnp.float64),
      MLP().init(jax.random.key(3), x))
  used = []
  for name in ("row_gram", "product_operator"):
    fn = getattr(gram_forms, name)
    monkeypatch.setattr(gram_forms, name, lambda *a, fn=fn, name=name: (
        used.append(name), fn(*a))[1])
  lam = 0.3
  opt = ngd(MLP().apply, 0.7, damping=lam, loss="softmax_cross_entropy",
            fisher=fisher, solver=solver, cg_tol=1e-14)
  new, _, _ = opt.step(params, opt.init(params), x, labels)
  if solver == "cholesky":
    assert "row_gram" in used
  else:
    # C > 1 outputs: the linearised J (J^T v) is C times cheaper than the
    # factor product, which serves one-output models only.
    assert C > 1 and "product_operator" not in used
  flat, unravel = ravel_pytree(params)
  u = MLP().apply(params, x)
  jac = jax.jacrev(lambda f: MLP().apply(unravel(f), x).reshape(-1))(flat)

  def example_loss(ui, yi):
    return -jax.nn.log_softmax(ui)[yi]

  g = jax.vmap(jax.grad(example_loss))(u, labels)
  s = jax.vmap(jax.grad(example_loss))(u, _sampled(u))
  ref = _reference(fisher, jac, g, None, s, 0.7, lam)
  delta = ravel_pytree(new)[0] - flat
  assert np.linalg.norm(np.asarray(delta) - ref) <= 1e-9 * np.linalg.norm(ref)
