"""K-FAC for dense and convolution layers, in primal and dual form.

Notation (per layer ``l``, from ``Model.layer_factors``): ``A`` ``(n, a)``
the layer inputs, ``B`` ``(n, c, b)`` the backpropagated pre-activation
gradients, so that ``d u[i, k] / d M[a, b] = A[i, a] B[i, k, b]`` for the
layer matrix ``M`` ``(a, b)``. With ``g = grad_u L(u)`` ``(n, c)`` and
``Gamma`` the ``(n, n c)`` matrix ``Gamma[i, (i, k)] = g[i, k]``, the
gradient is ``grad_M L = A^T Gamma B`` and the layer's Gauss-Newton block
``F_l = J_l^T J_l = sum_{i,k} (A_i A_i^T) (x) (B_ik B_ik^T)`` (the GGN of the
squared loss, used as the curvature for every loss, as NGD does in
Theorem 2). K-FAC replaces it, in the library's sum convention, by

    F_kfac,l = (A^T A) (x) (B^T B) / n           (B as an (n c, b) matrix)

and is block-diagonal over layers. With damping on each factor,

    Delta M = - eta * n * (A^T A + lam_A I)^{-1} A^T Gamma B
                        (B^T B + lam_B I)^{-1}.

For ``two_layer_relu`` the layer matrix is ``M = W^T`` ``(d, m)``,
``A = X`` and ``B = S~`` (rows ``s_i = a * S_i / sqrt(m)``), ``Gamma =
diag(r)`` for the squared loss, and this is docs/math.md's
``Delta W = - eta n (S~^T S~ + lam_S I)^{-1} S~^T R X (X^T X + lam_X I)^{-1}``
transposed (``lam_A = lam_X``, ``lam_B = lam_S``). The two-layer net is
the one-layer special case of the generic code; nothing is special-cased.

Damping (``damping = lam``, ``damping_split``, ``factor_damping``):

* ``"pi"`` (default): factored Tikhonov damping with Martens & Grosse's
  (2015, section 6.3) pi-adjusted split of ``lam`` between the factors of
  ``F_kfac = (A^T A / n) (x) (B^T B)``:
  ``(A^T A / n + pi sqrt(lam) I) (x) (B^T B + sqrt(lam) / pi I)`` with
  ``pi^2 = (tr(A^T A / n) / a) / (tr(B^T B) / b)``, i.e.
  ``lam_A = n pi sqrt(lam)``, ``lam_B = sqrt(lam) / pi``. (The split is the
  same wherever the ``1/n`` is put: ``pi`` absorbs it.)
* ``"exact"``: ``(F_kfac + lam I)^{-1}`` exactly, through eigendecompositions
  of the factors (more expensive than Cholesky: use for references and
  small layers).
* ``factor_damping=(lam_in, lam_out)``: fixed amounts added to ``A^T A`` and
  ``B^T B`` themselves (docs/math.md's ``lam_X``, ``lam_S`` for the two-layer
  net), on top of either split.

Relation to kfac-jax's conventions: kfac-jax preconditions the gradient of
the mean loss, ``grad L / n``, with batch-averaged factors, so its damped
curvature is ``F_kfac / n + lam' I``; its step is this module's step with
``damping = n lam'`` and the same learning rate, and its pi-split damping
``(A^T A / n + pi' sqrt(lam') I) (x) (B^T B / n + sqrt(lam') / pi' I)``
is the split above (``pi = pi' / sqrt(n)``, which the sum convention's
``B^T B`` absorbs). ``tests/optim_fisher_test.py`` checks the mini-batch
mode against that mean-convention form (``_pi_damped_step``).

Undamped (``damping=0``, no factor damping) the inverses are
pseudo-inverses, as in docs/math.md's ``P_S = S~ (S~^T S~)^+ S~^T``.

Primal and dual forms. Each factor is inverted either in its own size
(primal: ``a x a`` for ``A^T A``) or, by the push-through identity
``(A^T A + lam I)^{-1} A^T = A^T (A A^T + lam I)^{-1}``, in the number of
rows (dual: ``n x n``; ``n c x n c`` for the ``B`` side). ``form="auto"``
picks, per factor, whichever is smaller; ``"primal"``/``"dual"`` force one.
Both are exact, so they agree to rounding. For the two-layer net with
``m > n > d`` "auto" is primal on ``X^T X`` and dual on ``S~``: an ``n x n``
solve instead of an ``m x m`` one.

Output-space effect (docs/math.md): for the two-layer net, undamped,
``J Delta theta = - eta n (P_S * P_X) r``; with ``S~`` of full row rank and
Forster-isotropic inputs (``X^T X = (n/d) I``, unit rows) this is
``- eta d r``, so ``eta = 1/d`` is a full natural-gradient step.

Cross-entropy (docs/math.md). The output-side factor is ``B^T H B`` with
``H`` the loss's output metric: ``fisher="true"`` writes it exactly as
``B'^T B'`` with ``B'_i = S_i^T B_i`` (``S_i S_i^T = H_i``) and the gradient
as ``sum_k h_ik B'_ik`` (``S_i h_i = g_i``), so every form above applies
unchanged; ``"monte_carlo"`` uses one label sampled from the model per
example, ``b_i = B_i^T (p_i - e_{s_i})``; ``"empirical"`` the gradients.

Convolutions (and any weight applied at ``T`` positions of an example) get
Kronecker-factored blocks too (KFC, Grosse & Martens 2016), one per
feature group, in the variant ``weight_sharing`` names: ``"expand"``
(every position counts as an example, ``A~ = sum_{i,t} a a^T / (n T)``,
``B~ = sum_{i,k,t} s s^T / n``) or ``"reduce"`` (positions aggregated
first; Eschenhagen et al. 2023); ``ngdjax._src.optim.kfac_conv`` has the
formulas. The curvature is again ``n A~ (x) B~``, so the damping, its pi
split, the running averages and the inverse refresh below apply
unchanged. In the full-batch mode "expand" is the dense update with the
``n T`` positions as rows (primal or dual form as above); "reduce" is
solved in primal form (its gradient ``sum_t a_it y_it^T`` is not in the
row space of the aggregated inputs, so the push-through identity does
not apply).

Embeddings (a lookup of rows of a ``(V, D)`` table by tokens) are such a
layer with one-hot inputs; with ``"expand"`` their input factor is the
diagonal ``diag(counts) / (n T)`` of the token counts, kept as a length-
``V`` vector in the statistics, the running averages and the damped
inverse (``ngdjax._src.optim.kfac_embed``): each row of the table is
scaled by its own inverse count factor (a token absent from the batch by
the damping only) and multiplied by the shared ``D x D`` (or dual)
output-factor inverse, with no ``V x V`` matrix. ``"reduce"`` averages
the tokens of an example, whose input factor is not diagonal: it keeps
the dense one-hot form (``V x V`` factors).

Full-batch and mini-batch modes. By default (``factor_decay=None``,
``inverse_every=1``, ``statistics_every=1``) the factors are recomputed on
the batch at every step: the setting of the paper's Theorem 4. Mini-batch
mode (``factor_decay`` set, ``inverse_every > 1``, ``statistics_every > 1``
or ``fisher="monte_carlo"``) keeps per-example factor averages
``A~ = avg A^T A / n`` and ``B~ = avg B'^T B' / n`` in the state, updated
every ``statistics_every`` steps (Martens & Grosse 2015's ``T_1``; steps
``0, T_1, 2 T_1, ...``) to the exponentially weighted mean of the ``k``
batch factors so far, ``F_k = sum_j decay^(k-j) F^_j / sum_j
decay^(k-j)`` (``average_weight``; the decay applies once per update, not
per step; the first update takes the batch's factors, and the weight of
the old average rises to ``decay``, as kfac-jax weights its moving
averages), and their eigendecompositions, refreshed every
``inverse_every`` steps (``T_3``; steps ``0, T_3, ...``, after that step's
statistics update). Both use ``lax.cond``: on the other steps the layer
factors (``c`` backward passes to the pre-activations and the factor
products) and the eigendecompositions are not computed, and the step costs
one forward and one backward pass (the gradient) plus the preconditioning
products. The damping, which may change at every step, is applied to the
eigenvalues. Suggested for mini-batches: ``factor_decay=0.95``,
``inverse_every=10`` (``experiments.train``); ``statistics_every=10``
makes the amortised step cheapest (``benchmarks/steps.py``).

``inverse="cholesky"`` (mini-batch mode, ``damping_split="pi"``): instead of
eigendecompositions, each refresh stores the damped inverses
``(A~ + (lam_in / n + pi delta) I)^{-1}`` and ``(B~ + (lam_out / n +
delta / pi) I)^{-1}`` (``delta = sqrt(lam / n)``, ``pi`` as in
``averaged_update``) from a Cholesky factorisation
(``solvers.psd_solve``: a factorisation or solve it cannot vouch for falls
back to the eigendecomposition pseudo-inverse and counts in
``cholesky_failed``), and every step
multiplies ``(1/n) inv_A grad_M inv_B``: the same step as ``"eigh"`` when
the damping is constant, at a fraction of the refresh cost (``k^3 / 3``
for the factorisation, ``2 k^3`` for the solve against ``I`` and as much
for its residual check, against
LAPACK's tridiagonal eigensolver, ``9 k^3`` or more) and half the
per-step products. A
damping that changes between refreshes (a schedule) takes effect at the
next refresh, as in kfac-jax.

Example:

  >>> import jax, jax.numpy as jnp, ngdjax
  >>> from ngdjax.optim import kfac
  >>> model = ngdjax.two_layer_relu(width=512)
  >>> params = model.init(jax.random.key(0), in_dim=4)
  >>> x = ngdjax.normalize_rows(jax.random.normal(jax.random.key(1), (16, 4)))
  >>> opt = kfac(model, learning_rate=0.25, damping=1e-3)
  >>> state = opt.init(params)
  >>> params, state, info = jax.jit(opt.step)(params, state, x, x[:, 0])
  >>> info["update_norm"].shape
  ()
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ngdjax._src import checks, structure
from ngdjax._src import precision as precision_lib
from ngdjax._src.jacobian import jvp, split_model
from ngdjax._src.linalg import self_outer
from ngdjax._src.models import Model
from ngdjax._src.optim import base, core, kfac_conv, kfac_embed, solvers
from ngdjax._src.optim import damping as damping_lib
from ngdjax._src.typing import Array

FORMS = ("auto", "primal", "dual")
SPLITS = ("pi", "exact")
INVERSES = ("eigh", "cholesky")


KFACState = core.CurvatureState  # curvature: KFACFactors per layer, or ()


class KFACFactors(NamedTuple):
  """One layer's running factors (mini-batch mode; module docstring).

  Attributes:
    inputs_cov: ``(a, a)`` running average of ``A^T A / n``.
    grads_cov: ``(b, b)`` running average of ``B^T H B / n``.
    inputs_eigvals, inputs_eigvecs: ``(a,)``, ``(a, a)`` eigendecomposition
      of ``inputs_cov`` at the last refresh.
    grads_eigvals, grads_eigvecs: ``(b,)``, ``(b, b)`` the same for
      ``grads_cov``.
  """

  inputs_cov: Array
  grads_cov: Array
  inputs_eigvals: Array
  inputs_eigvecs: Array
  grads_eigvals: Array
  grads_eigvecs: Array


class KFACInverses(NamedTuple):
  """One layer's running factors and cached damped inverses
  (``inverse="cholesky"``; module docstring).

  Attributes:
    inputs_cov: ``(a, a)`` running average of ``A^T A / n``.
    grads_cov: ``(b, b)`` running average of ``B^T H B / n``.
    inputs_inv: ``(a, a)`` ``(inputs_cov + d_A I)^{-1}`` at the last refresh.
    grads_inv: ``(b, b)`` ``(grads_cov + d_B I)^{-1}`` at the last refresh.
  """

  inputs_cov: Array
  grads_cov: Array
  inputs_inv: Array
  grads_inv: Array


def use_dual(form: str, rows: int, dim: int) -> bool:
  """Whether a factor with ``rows`` rows and ``dim`` columns is solved dual.

  The dual solve is ``rows x rows``, the primal ``dim x dim``; "auto" takes
  the smaller (ties go to primal).
  """
  if form == "auto":
    return rows < dim
  return form == "dual"


def _pi(mean_a: Array, mean_b: Array) -> Array:
  """``pi = sqrt(mean_a / mean_b)`` (mean eigenvalues of the two factors);
  1 when either is zero (no information to balance)."""
  ok = (mean_a > 0) & (mean_b > 0)
  return jnp.where(ok, jnp.sqrt(jnp.where(ok, mean_a, 1.0)
                                / jnp.where(ok, mean_b, 1.0)), 1.0)


def pi_split(inputs: Array, grads: Array, damping) -> tuple[Array, Array]:
  """``(lam_A, lam_B)`` of the pi-adjusted split (module docstring).

  Args:
    inputs: ``A``, ``(n, a)``.
    grads: ``B`` as ``(n c, b)``.
    damping: ``lam >= 0``.

  Returns:
    ``lam_A = n pi sqrt(lam)`` and ``lam_B = sqrt(lam) / pi`` with
    ``pi^2 = (tr(A^T A) / (n a)) / (tr(B^T B) / b)``; ``pi = 1`` when a
    factor is zero (no information to balance).
  """
  n, a = inputs.shape
  pi = _pi(jnp.sum(jnp.square(inputs)) / (n * a),
           jnp.sum(jnp.square(grads)) / grads.shape[1])
  root = jnp.sqrt(jnp.asarray(damping, inputs.dtype))
  return n * pi * root, root / pi


def _gamma_dense(g: Array) -> Array:
  """``Gamma`` ``(n, n c)`` with ``Gamma[i, (i, k)] = g[i, k]``."""
  n, c = g.shape
  eye = jnp.eye(n, dtype=g.dtype)
  return (eye[:, :, None] * g[:, None, :]).reshape(n, n * c)


def factored_update(
    inputs: Array,
    grads: Array,
    g: Array,
    lam_a,
    lam_b,
    dual_a: bool,
    dual_b: bool,
    pinv_a: bool = False,
    pinv_b: bool = False,
) -> tuple[Array, Array]:
  """``n (A^T A + lam_A)^{-1} A^T Gamma B (B^T B + lam_B)^{-1}`` for a layer.

  The products are ordered so that no ``(n, n c)`` intermediate is formed
  unless both factors are dual, and every solve has as few right-hand sides
  as the form allows (for the two-layer net with a dual ``S~`` side: an
  ``n x n`` solve against ``d`` columns).

  Args:
    inputs: ``A`` ``(n, a)``.
    grads: ``B`` ``(n, c, b)``.
    g: ``grad_u L`` ``(n, c)``.
    lam_a, lam_b: damping added to ``A^T A`` and ``B^T B``.
    dual_a, dual_b: solve that factor in dual (push-through) form.
    pinv_a, pinv_b: use pseudo-inverses (zero damping, singular factor).

  Returns:
    ``(delta (a, b), failed)``: the preconditioned gradient (the update is
    ``-eta * delta``) and the number of Cholesky fallbacks.
  """
  n, c, b = grads.shape
  a = inputs.shape[1]
  bf = grads.reshape(n * c, b)

  def right_dual(t):  # t (r, n c) -> t (B B^T + lam_B)^{-1} B, (r, b)
    s, failed = solvers.psd_solve(self_outer(bf), t.T, lam_b, pinv=pinv_b)
    return s.T @ bf, failed

  def right_primal(y):  # y (r, b) = t B -> y (B^T B + lam_B)^{-1}
    s, failed = solvers.psd_solve(self_outer(bf.T), y.T, lam_b, pinv=pinv_b)
    return s.T, failed

  if dual_a and dual_b:
    # K = (A A^T + lam_A)^{-1} Gamma (B B^T + lam_B)^{-1} is (n, n c) and
    # delta = A^T K B; multiply out in the cheaper order (flops / 2n):
    # (A^T K) B costs n^2 c + a c (n + b), A^T (K B) costs b (n + n c + a).
    k_t, f1 = solvers.psd_solve(self_outer(bf), _gamma_dense(g).T, lam_b,
                                pinv=pinv_b)  # K^T before the A side
    if n * n * c + a * c * (n + b) < b * (n + n * c + a):
      k, f2 = solvers.psd_solve(self_outer(inputs), k_t.T, lam_a, pinv=pinv_a)
      delta = (inputs.T @ k) @ bf
    else:
      s, f2 = solvers.psd_solve(self_outer(inputs), k_t.T @ bf, lam_a,
                                pinv=pinv_a)
      delta = inputs.T @ s
  elif dual_a:
    t, f1 = right_primal(jnp.einsum("ik,ikb->ib", g, grads))
    s, f2 = solvers.psd_solve(self_outer(inputs), t, lam_a, pinv=pinv_a)
    delta = inputs.T @ s
  elif dual_b:
    # A^T Gamma as (a, n c): column (i, k) is A[i] g[i, k].
    z = (inputs.T[:, :, None] * g[None, :, :]).reshape(a, n * c)
    t, f1 = right_dual(z)
    delta, f2 = solvers.psd_solve(self_outer(inputs.T), t, lam_a, pinv=pinv_a)
  else:
    t, f1 = right_primal(inputs.T @ jnp.einsum("ik,ikb->ib", g, grads))
    delta, f2 = solvers.psd_solve(self_outer(inputs.T), t, lam_a, pinv=pinv_a)
  return n * delta, f1 + f2


def exact_update(
    inputs: Array,
    grads: Array,
    g: Array,
    damping,
    lam_a,
    lam_b,
    dual_a: bool,
    dual_b: bool,
) -> Array:
  """``(F_kfac + lam I)^{-1} vec(A^T Gamma B)`` for a layer, exactly.

  ``F_kfac = (A^T A + lam_A I) (x) (B^T B + lam_B I) / n``. With
  ``A^T A = Q_A diag(alpha) Q_A^T`` and ``B^T B = Q_B diag(beta) Q_B^T`` the
  result is ``Q_A [(Q_A^T G_M Q_B) / ((alpha + lam_A)(beta + lam_B)^T / n +
  lam)] Q_B^T``. In dual form the eigenvectors come from ``A A^T = U diag
  U^T`` (``A^T U`` spans the range of ``A^T A``, and the gradient has no
  component outside it): ``A^T U [(U^T Gamma ...) / ...]``, with no division
  by singular values. Eigenvalues below ``k eps max`` count as 0 and a zero
  denominator as a pseudo-inverse.

  Returns:
    ``(a, b)``: the preconditioned gradient (the update is ``-eta`` times
    it).
  """
  n = grads.shape[0]
  eb, right, back = solvers.output_factor_eigh(grads, g, dual=dual_b)
  if dual_a:
    ea, ua = jnp.linalg.eigh(self_outer(inputs))
    core = ua.T @ right
  else:
    ea, qa = jnp.linalg.eigh(self_outer(inputs.T))
    core = qa.T @ (inputs.T @ right)
  core = solvers.divide_by_kronecker_spectrum(
      core, solvers.clamp_spectrum(ea) + lam_a,
      solvers.clamp_spectrum(eb) + lam_b, n, damping)
  core = back(core)
  return inputs.T @ (ua @ core) if dual_a else qa @ core


def _check_model(model):
  """The one place that decides whether ``model`` can be preconditioned:
  a ``Model`` or any ``apply(params, x)``, whose dense layers are found
  when it is traced (``ngdjax._src.structure``)."""
  split_model(model)  # ValueError naming the argument if neither
  return model


# The four access points to the model's layer structure (kept single so
# that another source of layer factors plugs in here only). Dense layers
# keep their ``(a, b)`` layer matrices; a convolution's or shared-weight
# layer's ``(a, G b_g)`` matrix is handled as its ``G`` group blocks,
# ``(G, a, b_g)``. Elementwise scales (norm gains and shifts) are such
# layers with one group per feature (``a = 1`` or 2, ``b_g = 1``): a
# Kronecker block per feature, block-diagonal over features; an embedding
# is a shared layer with one-hot inputs (``layer_kinds.EmbedLayer``), whose
# "expand" input factor is diagonal with the token counts
# (``kfac_embed``: a vector; "reduce" takes the one-hot shared-layer form).
KINDS = ("dense", "shared", "conv", "norm", "embed")

# True: embeddings take the one-hot shared-layer form with "expand" too
# (``(n T, V)`` inputs, ``V x V`` running factors): the reference the
# tests and ``benchmarks/kfac_embed.py`` compare the vector form with.
_ONE_HOT_EMBEDDINGS = False


def _vector_embedding(kind: str, weight_sharing: str) -> bool:
  """Whether a layer of ``kind`` gets ``kfac_embed``'s vector form."""
  return (kind == "embed" and weight_sharing == "expand"
          and not _ONE_HOT_EMBEDDINGS)


def _structure(model, params, x):
  return structure.model_structure(model, params, x).only(KINDS)


def _layer_factors(model, params, x, cotangents=None,
                   weight_sharing="expand"):
  """Per layer: a dense layer's ``LayerFactors(inputs (n, a), output_grads
  (n, r, b))``, an embedding's ``kfac_embed.EmbedFactors(ids (n, T),
  output_grads (n, r, T, D), V)`` (``"expand"``), or a convolution's
  (shared-weight layer's) ``kfac_conv.SharedFactors(patches (n, T, G, a),
  output_grads (n, r, T, G, b))``. The ``r`` rows are the pullbacks of
  ``cotangents`` (``Structure.factors``: ``None`` for the ``c`` outputs,
  ``(n, c)`` for one row, ``(n, c, r)`` for ``r``)."""
  st = _structure(model, params, x)
  out = []
  for lay, f in zip(st.layers, st.factors(params, x, cotangents),
                    strict=True):
    if lay.kind == "dense":
      out.append(f)
    elif _vector_embedding(lay.kind, weight_sharing):
      out.append(kfac_embed.EmbedFactors(f.inputs, f.output_grads,
                                         lay.fan_in))
    else:
      out.append(kfac_conv.SharedFactors(*lay.expand(f)))
  return tuple(out)


def _grouped(layer, mat: Array) -> Array:
  """A layer matrix ``(a, G b)`` as ``(G, a, b)`` (dense layers as is)."""
  if layer.kind == "dense":
    return mat
  return jnp.swapaxes(mat.reshape(mat.shape[0], layer.groups, -1), 0, 1)


def _ungrouped(layer, mat: Array) -> Array:
  """The inverse of ``_grouped``."""
  if layer.kind == "dense":
    return mat
  return jnp.swapaxes(mat, 0, 1).reshape(mat.shape[1], -1)


def _layer_matrices(model, params, x, tree) -> tuple[Array, ...]:
  """``tree`` (shaped like params, e.g. the gradient) as layer matrices."""
  st = _structure(model, params, x)
  return tuple(_grouped(lay, m) for lay, m in
               zip(st.layers, st.to_layer_matrices(tree), strict=True))


def _layer_shapes(model, params, example_inputs=None
                  ) -> tuple[tuple[str, tuple[int, ...]], ...]:
  """``(kind, shape)`` per layer: ``(a, b)`` of every dense layer matrix,
  ``(G, a, b)`` of every other kind's (the running factors' shapes).

  A ``Model`` knows them from its params; a bare apply's layers are found
  by tracing it on ``example_inputs`` (only their per-example shape and
  dtype matter).
  """
  if isinstance(model, Model) and model.to_layer_matrices is not None:
    return tuple(("dense", m.shape)
                 for m in model.to_layer_matrices(params))
  if example_inputs is None:
    raise ValueError(
        "example_inputs: running K-FAC factors (factor_decay, inverse_every "
        '> 1, statistics_every > 1, fisher="monte_carlo") with a bare apply '
        "function need example_inputs=, a batch of inputs (n, ...) like the "
        "training batches (any n), to find its layers at init"
    )
  kinds = []

  def matrices(p):  # (records the kinds while it is traced)
    kinds.extend(lay.kind for lay in
                 _structure(model, p, example_inputs).layers)
    return _layer_matrices(model, p, example_inputs, p)

  mats = jax.eval_shape(matrices, params)
  return tuple((k, m.shape) for k, m in zip(kinds, mats, strict=True))


def _to_params(model, mats, params, x, lam, fisher_rows):
  """Per-layer matrices (``_layer_matrices``' shapes) back to a params
  pytree.

  A bare apply's unmatched leaves (layer norms, embeddings, weights used
  twice) get their exact damped Fisher block in kernel form: with
  ``J_g`` their Jacobian ``(n, c, p_g)`` and ``(Z, h) = fisher_rows(J_g)``
  (``_fisher_factors``: ``Z_i = S_i^T J_g,i`` for the true Fisher, ``g_i^T
  J_g,i`` for the empirical one, ``J_g`` itself for ``H = I``),
  ``(Z^T Z + lam)^{-1} Z^T h = Z^T (Z Z^T + lam)^{-1} h``; zero damping
  gives the pseudo-inverse. Returns ``(params pytree, Cholesky
  fallbacks)``.
  """
  st = _structure(model, params, x)
  failed = jnp.zeros((), jnp.int32)
  generic = None
  if st.has_generic:
    jac = st.generic_jacobian(params, x)
    n = x.shape[0]
    rows, h = fisher_rows(jac.reshape(n, jac.shape[0] // n, -1))
    z = rows.reshape(-1, rows.shape[-1])
    v, failed = solvers.psd_solve(self_outer(z), h.reshape(-1), lam)
    generic = z.T @ v
  mats = [_ungrouped(lay, m) for lay, m in zip(st.layers, mats, strict=True)]
  return st.from_layer_matrices(mats, generic), failed


def _fisher_cotangents(loss, fisher, u, y, g, key):
  """``(cotangents, h)``: output cotangents whose pullbacks are the layer
  factors' Fisher rows ``B'`` (``_fisher_factors``, one backward pass per
  row: ``c`` for the true Fisher, one for the empirical and Monte Carlo
  ones) and the gradient weights ``h`` (``None`` for Monte Carlo)."""
  if fisher == "true" and loss.hessian is None:
    return None, g
  if fisher == "true":
    return core.hessian_root(loss, u, y)
  if fisher == "empirical":
    return g, jnp.ones((g.shape[0], 1), g.dtype)
  return loss.grad(u, loss.sample(key, u)).astype(g.dtype), None


def _fisher_factors(loss, fisher, u, y, g, grads, key):
  """``(B', h)``: the factor's back-propagated rows and gradient weights.

  ``B'^T B' = B^T H B`` is the output-side factor (docs/math.md) and, where it
  exists, ``h`` (``(n, c')``) writes the gradient in the same rows,
  ``sum_k g_ik B_ik = sum_k h_ik B'_ik``; ``h = None`` when it does not
  (the Monte Carlo factor: the gradient is then formed from ``B`` and ``g``).

  * ``"true"``, ``H = I``: ``B' = B``, ``h = g``.
  * ``"true"`` with ``H = S S^T``: ``B'_i = S_i^T B_i``, ``h_i`` with
    ``S_i h_i = g_i`` (exact; ``ngdjax.optim.core.hessian_root``).
  * ``"empirical"``: ``B'_i = g_i^T B_i`` (one row), ``h = 1``.
  * ``"monte_carlo"``: ``B'_i = s_i^T B_i`` with ``s_i`` the gradient at a
    label sampled from the model (one row), ``h = None``.
  """
  n = g.shape[0]
  if fisher == "true" and loss.hessian is None:
    return grads, g
  # Trailing axes (a convolution's positions and groups) ride along.
  rest = grads.shape[2:]
  grads = grads.reshape(grads.shape[:2] + (-1,))
  if fisher == "true":
    s_mat, h = core.hessian_root(loss, u, y)
    rows = jnp.einsum("ijk,ijb->ikb", s_mat, grads)
  elif fisher == "empirical":
    rows = jnp.einsum("ik,ikb->ib", g, grads)[:, None, :]
    h = jnp.ones((n, 1), g.dtype)
  else:
    sampled = loss.grad(u, loss.sample(key, u)).astype(g.dtype)
    rows = jnp.einsum("ik,ikb->ib", sampled, grads)[:, None, :]
    h = None
  return rows.reshape(rows.shape[:2] + rest), h


def averaged_update(
    factors: KFACFactors,
    grad_m: Array,
    n: int,
    damping,
    lam_in,
    lam_out,
    split: str,
) -> Array:
  """The preconditioned gradient from running factors (mini-batch mode).

  With ``A~ = inputs_cov`` and ``B~ = grads_cov`` (per-example averages),
  the batch's K-FAC curvature in the sum convention is ``n A~ (x) B~``.
  ``"pi"``: ``(1/n) (A~ + lam_in/n + pi delta)^{-1} grad_M (B~ + lam_out/n
  + delta / pi)^{-1}`` with ``delta = sqrt(lam / n)`` and ``pi^2 =
  (tr A~ / a) / (tr B~ / b)``: the full-batch step's split exactly (module
  docstring). ``"exact"``: ``(n (A~ + lam_in/n) (x) (B~ + lam_out/n) +
  lam I)^{-1} vec(grad_M)``. Both through the cached eigendecompositions,
  so the damping may change between refreshes.
  """
  qa, qb = factors.inputs_eigvecs, factors.grads_eigvecs
  core_m = qa.T @ grad_m @ qb
  core_m = core_m * _eigen_inverse(factors.inputs_eigvals,
                                   factors.grads_eigvals, n, damping, lam_in,
                                   lam_out, split)
  return qa @ core_m @ qb.T


def _eigen_inverse(eig_a, eig_b, n, damping, lam_in, lam_out, split, *,
                   clamp_a=True):
  """``(a, b)``: the elementwise inverse of the damped curvature in the
  factors' eigenbasis (``averaged_update``; 0 in a pseudo-inverse's null
  space), from the eigenvalues ``eig_a`` ``(a,)`` and ``eig_b`` ``(b,)``
  of the running factors. ``clamp_a=False`` for exact eigenvalues (an
  embedding's diagonal: none is round-off)."""
  ea = solvers.clamp_spectrum(eig_a) if clamp_a else eig_a
  ea = ea + lam_in / n
  eb = solvers.clamp_spectrum(eig_b) + lam_out / n
  if split == "pi":
    pi = _pi(jnp.sum(eig_a) / ea.shape[0], jnp.sum(eig_b) / eb.shape[0])
    delta = jnp.sqrt(jnp.asarray(damping, ea.dtype) / n)
    den = n * (ea + pi * delta)[:, None] * (eb + delta / pi)[None, :]
  else:
    den = n * ea[:, None] * eb[None, :] + damping
  scale = jnp.max(jnp.abs(den))
  keep = den > den.size * jnp.finfo(den.dtype).eps * scale
  # Damped, every denominator is >= lam > 0 and is inverted (as kfac-jax
  # does): the relative cutoff (the pseudo-inverse of zero damping) would
  # drop real curvature directions once adaptive damping has become small.
  damped = (jnp.asarray(damping) > 0) | (lam_in > 0) | (lam_out > 0)
  keep = keep | (damped & (den > 0))
  return jnp.where(keep, 1.0 / jnp.where(keep, den, 1.0), 0.0)


def average_weight(decay: float, k, dtype) -> Array:
  """The weight of the old average at the ``k``-th factor update (k >= 1).

  The running factor is the exponentially weighted mean of the ``k`` batch
  factors so far, ``F_k = sum_j decay^(k-j) F^_j / sum_j decay^(k-j)``
  (kfac-jax's weighting), which is the recursion ``F_k = w F_{k-1} + (1 -
  w) F^_k`` with ``w = 1 - 1 / W_k``, ``W_k = sum_{j<k} decay^j = (1 -
  decay^k) / (1 - decay)``: ``w = (decay - decay^k) / (1 - decay^k)``, 0 at
  ``k = 1`` (also for ``decay = 0``) and ``decay`` in the limit. (The plain
  recursion with ``w = decay`` from the first batch on would leave that
  batch a weight ``decay^(k-1)``: 0.63 after 10 updates at 0.95.)
  """
  decay_k = jnp.asarray(decay, dtype) ** jnp.asarray(k, dtype)
  return (decay - decay_k) / (1 - decay_k)


def _refresh(refresh, cov_a, cov_b, old: KFACFactors) -> KFACFactors:
  """New averages; eigendecompositions recomputed only when ``refresh``."""

  def eig(mats):
    out = []
    for mat in mats:
      out.extend(jnp.linalg.eigh(0.5 * (mat + mat.T)))
    return tuple(out)

  def keep(mats):
    del mats
    return (old.inputs_eigvals, old.inputs_eigvecs, old.grads_eigvals,
            old.grads_eigvecs)

  ea, qa, eb, qb = jax.lax.cond(refresh, eig, keep, (cov_a, cov_b))
  return KFACFactors(cov_a, cov_b, ea, qa, eb, qb)


def _damped_inverses(cov_a, cov_b, n, lam, lam_in, lam_out):
  """``(inv_A, inv_B, fallbacks)`` of ``inverse="cholesky"`` (module
  docstring): the pi split of ``averaged_update`` with inverses in place of
  eigendecompositions."""
  pi = _pi(jnp.trace(cov_a) / cov_a.shape[0],
           jnp.trace(cov_b) / cov_b.shape[0])
  delta = jnp.sqrt(jnp.asarray(lam, cov_a.dtype) / n)
  inv_a, failed_a = _damped_inverse(cov_a, lam_in / n + pi * delta)
  inv_b, failed_b = _damped_inverse(cov_b, lam_out / n + delta / pi)
  return inv_a, inv_b, failed_a + failed_b


def _damped_inverse(cov, damp) -> tuple[Array, Array]:
  """``((cov + damp I)^{-1}, failed)`` by ``solvers.psd_solve``: Cholesky
  (the library's blocked one above ``solvers.CHOLESKY_BLOCK``), the
  eigendecomposition pseudo-inverse when it fails (``failed = 1``)."""
  sym = 0.5 * (cov + cov.T)
  eye = jnp.eye(cov.shape[0], dtype=cov.dtype)
  inv, failed = solvers.psd_solve(sym, eye, damp)
  return 0.5 * (inv + inv.T), failed


class _Settings(NamedTuple):
  """K-FAC's validated settings (``kfac``'s arguments)."""

  form: str
  damping_split: str
  fisher: str
  averaged: bool  # mini-batch mode: running factors in the state
  decay: float
  inverse_every: int
  statistics_every: int
  inverse: str
  lam_in: float
  lam_out: float
  static_zero: bool
  weight_sharing: str
  example_inputs: Array | None


def _check_settings(form, damping_split, factor_damping, fisher, loss,
                    factor_decay, inverse_every, static_zero,
                    statistics_every, inverse, example_inputs,
                    weight_sharing) -> _Settings:
  """Validates K-FAC's settings (ValueError naming the argument)."""
  if example_inputs is not None:
    example_inputs = checks.check_inputs("example_inputs", example_inputs,
                                         any_shape=True)
  checks.check_choice("form", form, FORMS)
  checks.check_choice("damping_split", damping_split, SPLITS)
  checks.check_choice("inverse", inverse, INVERSES)
  checks.check_choice("weight_sharing", weight_sharing,
                      kfac_conv.APPROXIMATIONS)
  if inverse == "cholesky" and damping_split != "pi":
    raise ValueError('inverse="cholesky" needs damping_split="pi" (the '
                     '"exact" split needs the eigendecompositions)')
  base.check_fisher(fisher, loss)
  if factor_decay is not None:
    checks.check_scalar("factor_decay", factor_decay, nonnegative=True)
    if not float(factor_decay) < 1.0:
      raise ValueError(f"factor_decay must be in [0, 1), got {factor_decay!r}")
    factor_decay = float(factor_decay)
  checks.check_scalar("inverse_every", inverse_every, positive=True,
                      integer=True)
  checks.check_scalar("statistics_every", statistics_every, positive=True,
                      integer=True)
  averaged = (factor_decay is not None or int(inverse_every) > 1
              or int(statistics_every) > 1 or fisher == "monte_carlo")
  if factor_damping is None:
    lam_in, lam_out = 0.0, 0.0
  else:
    try:
      lam_in, lam_out = factor_damping
    except (TypeError, ValueError):
      raise ValueError(
          "factor_damping must be a pair (lam_in, lam_out), got "
          f"{factor_damping!r}"
      ) from None
    checks.check_scalar("factor_damping[0]", lam_in, nonnegative=True)
    checks.check_scalar("factor_damping[1]", lam_out, nonnegative=True)
  return _Settings(form, damping_split, fisher, averaged, factor_decay or 0.0,
                   int(inverse_every), int(statistics_every), inverse,
                   float(lam_in), float(lam_out), static_zero,
                   weight_sharing, example_inputs)


def _init_curvature(model, st: _Settings, params):
  """Zero running factors (identity inverses) per layer; ``()`` in the
  full-batch mode. A convolution's carry a leading group axis; an
  embedding's (``"expand"``) are ``kfac_embed``'s, with vectors on the
  token side."""
  if not st.averaged:
    return ()
  dtype = base.param_dtype(params)
  out = []
  for kind, shape in _layer_shapes(model, params, st.example_inputs):
    lead, (a, b) = shape[:-2], shape[-2:]
    if _vector_embedding(kind, st.weight_sharing):
      out.append(kfac_embed.init_state(a, b, dtype, st.inverse))
      continue

    def eye(k, lead=lead):
      return jnp.broadcast_to(jnp.eye(k, dtype=dtype), lead + (k, k))

    za, zb = jnp.zeros(lead + (a, a), dtype), jnp.zeros(lead + (b, b), dtype)
    if st.inverse == "cholesky":
      out.append(KFACInverses(za, zb, eye(a), eye(b)))
    else:
      out.append(KFACFactors(za, zb, jnp.zeros(lead + (a,), dtype), eye(a),
                             jnp.zeros(lead + (b,), dtype), eye(b)))
  return tuple(out)


def _dense_update(inputs, grads, h, lam, st: _Settings):
  """The full-batch step of one dense layer: ``(delta (a, b), fallbacks)``
  (``factored_update`` or ``exact_update``, in the form ``st.form`` picks).
  ``inputs`` ``(n, a)``, ``grads`` ``(n, c, b)``, ``h`` ``(n, c)``."""
  n, c, b = grads.shape
  dual_a = use_dual(st.form, n, inputs.shape[1])
  dual_b = use_dual(st.form, n * c, b)
  if st.damping_split == "exact":
    return (exact_update(inputs, grads, h, lam, st.lam_in, st.lam_out,
                         dual_a, dual_b), jnp.zeros((), jnp.int32))
  split_a, split_b = pi_split(inputs, grads.reshape(n * c, b), lam)
  return factored_update(
      inputs, grads, h, st.lam_in + split_a, st.lam_out + split_b,
      dual_a, dual_b,
      pinv_a=st.static_zero and st.lam_in == 0.0,
      pinv_b=st.static_zero and st.lam_out == 0.0,
  )


def _shared_update(patches, grads, h, lam, st: _Settings):
  """The full-batch step of a convolution (or any weight shared over ``T``
  positions): ``(delta (G, a, b), fallbacks)``.

  ``patches`` ``(n, T, G, a)``, ``grads`` ``(n, c, T, G, b)`` (already in
  the Fisher's rows), ``h`` ``(n, c)``. ``"expand"`` is the dense update
  with the ``n T`` positions as rows (``kfac_conv``), so its primal and dual
  forms are the dense ones; ``"reduce"``'s gradient ``sum_t a_it y_it^T``
  is not in the row space of the aggregated inputs, so it is solved in
  primal form (eigendecompositions of its factors) whatever ``form``.
  """
  n, t, groups, _ = patches.shape
  c = grads.shape[1]
  if st.weight_sharing == "expand":
    h_e = jnp.repeat(h, t, axis=0)  # rows (i, t)

    def group(p_k, g_k):  # (n, T, a), (n, c, T, b): rows (i, t)
      return _dense_update(p_k.reshape(n * t, -1),
                           jnp.swapaxes(g_k, 1, 2).reshape(n * t, c, -1),
                           h_e, lam, st)

    # (vmapped over groups: a norm layer has one per feature)
    deltas, failed = _per_group(group, jnp.moveaxis(patches, 2, 0),
                                jnp.moveaxis(grads, 3, 0))
    return deltas, jnp.sum(failed)
  cov_a, cov_b = kfac_conv.factors(patches, grads, "reduce")
  grad_m = jnp.einsum("itga,iktgb,ik->gab", patches, grads, h)

  def update(cov_a, cov_b, grad_m):
    factors = KFACFactors(cov_a, cov_b, *jnp.linalg.eigh(cov_a),
                          *jnp.linalg.eigh(cov_b))
    return averaged_update(factors, grad_m, n, lam, st.lam_in, st.lam_out,
                           st.damping_split)

  return (_per_group(update, cov_a, cov_b, grad_m),
          jnp.zeros((), jnp.int32))


def _embed_update(f: kfac_embed.EmbedFactors, h, lam, st: _Settings):
  """The full-batch step of an embedding (``"expand"``): ``(delta (1, V,
  D), fallbacks)``, ``_shared_update``'s with the one-hot inputs, in
  ``kfac_embed``'s vector form. Its pi split is ``pi_split``'s with ``m =
  n T`` one-hot rows (``tr(A^T A) / (m V) = 1 / V``); ``form`` picks the
  ``B`` side's form only (the token side is diagonal either way)."""
  n, c, t, d = f.output_grads.shape
  m = n * t
  dual_b = use_dual(st.form, m * c, d)
  if st.damping_split == "exact":
    delta = kfac_embed.exact_update(f, h, lam, st.lam_in, st.lam_out,
                                    dual_b=dual_b)
    return delta[None], jnp.zeros((), jnp.int32)
  dtype = f.output_grads.dtype
  pi = _pi(jnp.asarray(1.0 / f.vocab, dtype),
           jnp.sum(jnp.square(f.output_grads)) / d)
  root = jnp.sqrt(jnp.asarray(lam, dtype))
  delta, failed = kfac_embed.factored_update(
      f, h, st.lam_in + m * pi * root, st.lam_out + root / pi,
      dual_b=dual_b,
      pinv_a=st.static_zero and st.lam_in == 0.0,
      pinv_b=st.static_zero and st.lam_out == 0.0)
  return delta[None], failed


def _per_group(fn, *args):
  """``fn`` on each group (leading axis) of ``args``; without ``vmap`` for
  one group, so that ``lax.cond`` inside stays a branch."""
  groups = jax.tree_util.tree_leaves(args)[0].shape[0]
  if groups == 1:
    out = fn(*jax.tree_util.tree_map(lambda v: v[0], args))
    return jax.tree_util.tree_map(lambda v: v[None], out)
  return jax.vmap(fn)(*args)


def _full_batch_direction(model, loss, st: _Settings, params, x, y, lam,
                          key):
  """The full-batch mode's direction: each layer's factors on the batch."""
  u = base.outputs_fn(split_model(model)[0], x)(params)
  g = loss.grad(u, y).astype(u.dtype)
  deltas, failed = [], jnp.zeros((), jnp.int32)
  cotangents, h = _fisher_cotangents(loss, st.fisher, u, y, g, key)
  for f in _layer_factors(model, params, x, cotangents, st.weight_sharing):
    grads = f.output_grads
    if isinstance(f, kfac_embed.EmbedFactors):
      delta, fl = _embed_update(f, h, lam, st)
    elif isinstance(f, kfac_conv.SharedFactors):
      delta, fl = _shared_update(f.patches, grads, h, lam, st)
    else:
      delta, fl = _dense_update(f.inputs, grads, h, lam, st)
    deltas.append(delta)
    failed = failed + fl
  direction, fl = _to_params(model, deltas, params, x, lam,
                             _generic_rows(loss, st, u, y, g))
  return core.Direction(u, direction, None, (),
                        {"cholesky_failed": failed + fl})


def _generic_rows(loss, st: _Settings, u, y, g):
  # The Monte Carlo block would need Woodbury (lam > 0); unmatched leaves
  # take the exact Fisher block instead.
  generic_fisher = "true" if st.fisher == "monte_carlo" else st.fisher
  return lambda jac: _fisher_factors(loss, generic_fisher, u, y, g, jac,
                                     None)


def _statistics(model, loss, st: _Settings, params, x, u, y, g, key, count,
                old_covs):
  """The running factor averages updated with the batch's factors."""
  n = u.shape[0]
  w = average_weight(st.decay, count // st.statistics_every + 1, u.dtype)
  covs = []
  cotangents, _ = _fisher_cotangents(loss, st.fisher, u, y, g, key)
  for f, (old_a, old_b) in zip(
      _layer_factors(model, params, x, cotangents, st.weight_sharing),
      old_covs, strict=True):
    grads = f.output_grads
    if isinstance(f, kfac_embed.EmbedFactors):
      new_a, new_b = kfac_embed.factors(f)
    elif isinstance(f, kfac_conv.SharedFactors):
      new_a, new_b = kfac_conv.factors(f.patches, grads, st.weight_sharing)
    else:
      bf = grads.reshape(-1, grads.shape[-1])
      new_a, new_b = self_outer(f.inputs.T) / n, self_outer(bf.T) / n
    covs.append((w * old_a + (1 - w) * new_a, w * old_b + (1 - w) * new_b))
  return tuple(covs)


def _averaged_layer(old, cov_a, cov_b, grad_m, refresh, n, lam,
                    st: _Settings):
  """One layer's (one group's) step from running factors: ``(delta, new
  state, fallbacks)``; the inverses are refreshed when ``refresh``."""
  if st.inverse == "cholesky":
    inv_a, inv_b, fl = jax.lax.cond(
        refresh,
        lambda c: _damped_inverses(c[0], c[1], n, lam, st.lam_in,
                                   st.lam_out),
        lambda c: (c[2], c[3], jnp.zeros((), jnp.int32)),
        (cov_a, cov_b, old.inputs_inv, old.grads_inv))
    return (inv_a @ grad_m @ inv_b / n,
            KFACInverses(cov_a, cov_b, inv_a, inv_b), fl)
  factors = _refresh(refresh, cov_a, cov_b, old)
  return (averaged_update(factors, grad_m, n, lam, st.lam_in, st.lam_out,
                          st.damping_split),
          factors, jnp.zeros((), jnp.int32))


def _averaged_embed(old, cov_a, cov_b, grad_m, refresh, n, lam,
                    st: _Settings):
  """``_averaged_layer`` for an embedding's vector state
  (``kfac_embed.EmbedKFACFactors`` or ``EmbedKFACInverses``; ``cov_a``
  ``(V,)``, ``grad_m`` ``(V, D)``): the input side's eigenvectors are the
  identity and its inverse elementwise."""
  if st.inverse == "cholesky":

    def inverses(c):
      pi = _pi(jnp.sum(c[0]) / c[0].shape[0],
               jnp.trace(c[1]) / c[1].shape[0])
      delta = jnp.sqrt(jnp.asarray(lam, c[0].dtype) / n)
      inv_a, fa = kfac_embed.diagonal_inverse(c[0] + st.lam_in / n
                                              + pi * delta)
      inv_b, fb = _damped_inverse(c[1], st.lam_out / n + delta / pi)
      return inv_a, inv_b, fa + fb

    inv_a, inv_b, fl = jax.lax.cond(
        refresh, inverses,
        lambda c: (c[2], c[3], jnp.zeros((), jnp.int32)),
        (cov_a, cov_b, old.inputs_inv, old.grads_inv))
    return (inv_a[:, None] * grad_m @ inv_b / n,
            kfac_embed.EmbedKFACInverses(cov_a, cov_b, inv_a, inv_b), fl)
  ea, eb, qb = jax.lax.cond(
      refresh, lambda c: (c[0], *jnp.linalg.eigh(0.5 * (c[1] + c[1].T))),
      lambda c: (old.inputs_eigvals, old.grads_eigvals, old.grads_eigvecs),
      (cov_a, cov_b))
  core_m = (grad_m @ qb) * _eigen_inverse(ea, eb, n, lam, st.lam_in,
                                          st.lam_out, st.damping_split,
                                          clamp_a=False)
  return (core_m @ qb.T, kfac_embed.EmbedKFACFactors(cov_a, cov_b, ea, eb, qb),
          jnp.zeros((), jnp.int32))


def _averaged_direction(model, loss, st: _Settings, params, curvature, x, y,
                        lam, key, count):
  """The mini-batch mode's direction from running factors."""
  # The gradient from one backward pass; the layer factors (c backward
  # passes and the factor products) only on statistics steps.
  u, pullback = jax.vjp(base.outputs_fn(split_model(model)[0], x), params)
  g = loss.grad(u, y).astype(u.dtype)
  grad_ms = _layer_matrices(model, params, x, pullback(g)[0])
  n = u.shape[0]

  def statistics(old_covs):
    return _statistics(model, loss, st, params, x, u, y, g, key, count,
                       old_covs)

  old_covs = tuple((f.inputs_cov, f.grads_cov) for f in curvature)
  if st.statistics_every == 1:
    covs = statistics(old_covs)
  else:
    covs = jax.lax.cond(count % st.statistics_every == 0, statistics,
                        lambda old: old, old_covs)
  refresh = count % st.inverse_every == 0
  deltas, new_curv = [], []
  failed = jnp.zeros((), jnp.int32)
  for old, (cov_a, cov_b), grad_m in zip(curvature, covs, grad_ms,
                                         strict=True):
    grad_m = grad_m.astype(u.dtype)
    layer = functools.partial(_averaged_layer, refresh=refresh, n=n, lam=lam,
                              st=st)
    if isinstance(old, (kfac_embed.EmbedKFACFactors,
                        kfac_embed.EmbedKFACInverses)):
      delta, new, fl = _averaged_embed(old, cov_a, cov_b, grad_m[0], refresh,
                                       n, lam, st)
      delta = delta[None]
    elif grad_m.ndim == 3:  # a convolution: one Kronecker block per group
      delta, new, fl = _per_group(layer, old, cov_a, cov_b, grad_m)
      fl = jnp.sum(fl)
    else:
      delta, new, fl = layer(old, cov_a, cov_b, grad_m)
    deltas.append(delta)
    new_curv.append(new)
    failed = failed + fl
  direction, fl = _to_params(model, deltas, params, x, lam,
                             _generic_rows(loss, st, u, y, g))
  return core.Direction(u, direction, None, tuple(new_curv),
                        {"cholesky_failed": failed + fl})


def _method(model, loss, form, damping_split, factor_damping, fisher,
            factor_decay, inverse_every, static_zero,
            statistics_every=1, inverse="eigh",
            example_inputs=None, weight_sharing="expand") -> core.Method:
  """Validates K-FAC's settings; the direction for ``core.make``."""
  st = _check_settings(form, damping_split, factor_damping, fisher, loss,
                       factor_decay, inverse_every, static_zero,
                       statistics_every, inverse, example_inputs,
                       weight_sharing)

  def direction(params, curvature, x, y, lam, key, count):
    if st.averaged:
      return _averaged_direction(model, loss, st, params, curvature, x, y,
                                 lam, key, count)
    return _full_batch_direction(model, loss, st, params, x, y, lam, key)

  return core.Method(init=functools.partial(_init_curvature, model, st),
                     direction=direction)


def kfac(
    model: Model,
    learning_rate: base.ScalarOrSchedule | str = "adaptive",
    *,
    damping: float | Callable | damping_lib.LevenbergMarquardt | str
    | None = None,
    loss="squared",
    form: str = "auto",
    damping_split: str = "pi",
    factor_damping: tuple[float, float] | None = None,
    mesh=None,
    fisher: str = "true",
    factor_decay: float | None = None,
    inverse_every: int = 1,
    key=None,
    statistics_every: int = 1,
    inverse: str | None = None,
    example_inputs=None,
    precision: str | None = None,
    weight_sharing: str = "expand",
    momentum: float | str | None = None,
    model_batches: int = 1,
) -> base.Optimizer:
  """K-FAC (docs/math.md; module docstring).

  ``Delta M_l = - eta n (A^T A + lam_A)^{-1} A^T Gamma B (B^T H B +
  lam_B)^{-1}`` for every layer ``l`` (or the exact ``(F_kfac + lam
  I)^{-1}`` with ``damping_split="exact"``), with ``H`` the loss's output
  metric (identity for the regression losses).

  Args:
    model: a ``Model`` with layer factors (``two_layer_relu``, ``mlp``),
      or a bare ``apply(params, x)`` with any params pytree (flax,
      equinox, plain) and ``x`` ``(n, ...)``: its dense, shared-weight,
      convolution, norm and embedding layers are found in the traced
      computation (``ngdjax.describe_structure``; docs/guide/layers.md)
      and get Kronecker-factored blocks; all unmatched leaves together
      (weights used twice, gathers that are not row lookups) get their
      exact damped Fisher block on the batch, ``(J_g^T H J_g + lam
      I)^{-1} J_g^T grad_u L`` (the empirical Fisher's rows for
      ``fisher="empirical"``, the true Fisher for ``"monte_carlo"``),
      solved in kernel form (``N x N``, ``N = n c``; a pseudo-inverse when
      ``damping=0``). A bare apply's mini-batch mode needs
      ``example_inputs``.
    learning_rate: ``eta > 0`` (number or scalar array, held in the state),
      a schedule ``count -> eta``, or ``"adaptive"`` (default): the step
      size (and momentum) minimising the damped quadratic model on the
      batch (``ngdjax.optim.quadratic``; two JVPs and one forward pass
      more per step).
    damping: ``lam >= 0`` (number or array, held in the state), a schedule,
      ``levenberg_marquardt(...)`` (the predicted reduction uses ``J
      delta`` from one JVP), or ``"adaptive"`` (``ngdjax.optim.damping``:
      Levenberg-Marquardt every 5 steps from ``lam = n``). ``None``
      (default): ``"adaptive"`` with an adaptive learning rate, else 0.
      The factored damping follows it (``damping_split``).
    loss: a name in ``ngdjax.losses.LOSSES`` or a ``Loss``; its gradient
      ``grad_u L`` replaces the residual ``r``.
    form: ``"auto"`` (per factor, the smaller solve), ``"primal"`` or
      ``"dual"`` (full-batch mode only; mini-batch mode is primal).
    damping_split: ``"pi"`` or ``"exact"``.
    factor_damping: optional ``(lam_in, lam_out) >= 0`` added to ``A^T A``
      and ``B^T B`` of every layer.
    mesh: optional one-axis ``jax.sharding.Mesh``: the example axis of the
      batch is split over its devices and the factor products are
      partitioned by the SPMD compiler, reductions over examples becoming
      all-reduces; the factor solves run replicated.
    fisher: the output-side factor ``B^T H B``: ``"true"`` (exact, through
      ``H``'s square root), ``"empirical"`` (the gradients' outer products)
      or ``"monte_carlo"`` (one label sampled from the model per example;
      always mini-batch mode).
    factor_decay: ``None`` (default: the factors of the current batch only,
      the paper's full-batch setting) or ``decay`` in ``[0, 1)``: running
      averages, the exponentially weighted mean ``sum_j decay^(k-j) F^_j /
      sum_j decay^(k-j)`` of the batch factors ``F^_j`` of the ``k``
      updates so far (``average_weight``). ``0.95`` suits mini-batches.
    inverse_every: refresh the factors' eigendecompositions every this many
      steps (default 1; 10 suits mini-batches), at steps ``0, k, 2k, ...``
      (after that step's statistics update).
    key: PRNG key for ``"monte_carlo"`` (default ``jax.random.key(0)``).
    statistics_every: update the running factor averages every this many
      steps (default 1: every step), at steps ``0, T, 2T, ...``; each update
      counts once in the weighted mean (the decay is per update). The
      steps in between compute only the gradient (one backward pass) and
      the preconditioned direction from the cached eigendecompositions.
      Any value ``> 1`` selects the mini-batch mode.
    inverse: how the mini-batch mode refreshes its factors: ``"eigh"``
      (eigendecompositions, the damping may change at every step) or
      ``"cholesky"`` (damped inverses from a Cholesky factorisation at
      the refresh's damping, much cheaper; ``damping_split="pi"`` only;
      module docstring). ``None`` (default): ``"cholesky"`` with a
      Levenberg-Marquardt damping and the pi split (a damping that
      changes every few steps, as kfac-jax applies it), else ``"eigh"``.
      Unused in the full-batch mode, which always solves by Cholesky.
    example_inputs: for a bare apply in the mini-batch mode, a batch of
      inputs ``(n, ...)`` shaped like the training batches (any ``n``):
      ``init`` traces the apply on it to size the running factors. Not
      needed for a ``Model``.
    precision: ``"highest"`` (default: float32-accurate factor statistics
      and products on every backend), ``"default"`` or ``"fast"``
      (``ngdjax.precision``; ``"mixed"`` is an NGD mode).
    weight_sharing: the Kronecker factors of a layer applied at ``T``
      positions of each example (a convolution): ``"expand"`` (default;
      KFC, every position counts as an example) or ``"reduce"`` (positions
      aggregated first; Eschenhagen et al. 2023); see
      ``ngdjax._src.optim.kfac_conv``.
    momentum: ``"adaptive"`` (chosen with the learning rate by the
      quadratic model), a number in ``[0, 1)`` (heavy ball, ``delta = -eta
      d + mu v``; with ``learning_rate="adaptive"`` the step size is chosen
      for it), or ``None`` (default: ``"adaptive"`` with an adaptive
      learning rate, else 0).
    model_batches: the batches the quadratic model of
      ``learning_rate="adaptive"`` is built on: 1 (default; the current
      one, as in Martens & Grosse 2015) or 2 (the current and the previous
      one, stored in the state; needs ``example_inputs``, and every batch
      must have its shape; as in ``ngd``).

  Returns:
    ``Optimizer(init, step)``. Info: ``loss``, ``residual_norm``,
    ``update_norm``, ``damping``, ``learning_rate``, ``cholesky_failed``
    (factor solves that fell back to the pseudo-inverse, summed over
    layers; in mini-batch mode only ``inverse="cholesky"`` refreshes
    count), the fault flags of ``ngdjax.optim.core``, and for
    Levenberg-Marquardt ``reduction_ratio`` and ``loss_after``.

  Raises:
    ValueError: a model without layer factors, bad hyper-parameters, or
      (from ``step``) non-finite params or a malformed batch.
  """
  model = _check_model(model)
  mesh = base.check_mesh(mesh)
  learning_rate, momentum, damping, _ = core.step_settings(
      learning_rate, momentum, damping)
  rule = damping_lib.resolve(damping)
  if inverse is None:
    inverse = ("cholesky" if rule.adaptive is not None
               and damping_split == "pi" else "eigh")
  loss = base.check_loss(loss)
  method = _method(model, loss, form, damping_split, factor_damping, fisher,
                   factor_decay, inverse_every, rule.static_zero,
                   statistics_every, inverse, example_inputs,
                   weight_sharing)

  def jvp_fn(params, x, tangent):
    return jvp(model, params, x, tangent)

  return core.make(model, split_model(model)[0], loss, learning_rate,
                   damping, method,
                   mesh=mesh, key=key, jvp_fn=jvp_fn, momentum=momentum,
                   precision=_check_precision(precision),
                   model_batches=model_batches, example_inputs=example_inputs)


def kfac_preconditioner(
    model: Model,
    damping: float | Callable = 0.0,
    *,
    loss="squared",
    form: str = "auto",
    damping_split: str = "pi",
    factor_damping: tuple[float, float] | None = None,
    fisher: str = "true",
    factor_decay: float | None = None,
    inverse_every: int = 1,
    key=None,
    statistics_every: int = 1,
    inverse: str = "eigh",
    example_inputs=None,
    precision: str | None = None,
    weight_sharing: str = "expand",
) -> optax.GradientTransformationExtraArgs:
  """K-FAC's direction as an optax transformation (as ``ngd_preconditioner``).

  ``update(updates, state, params, x=x, y=y)`` returns ``(F_kfac +
  damping)^{-1} grad`` at ``params`` on the batch, in place of ``updates``;
  the running factors live in ``state.curvature``.
  ``optax.chain(kfac_preconditioner(model, lam), optax.sgd(eta))`` is
  ``kfac(model, eta, lam)``.

  Args:
    model, damping, loss, form, damping_split, factor_damping, fisher,
      factor_decay, inverse_every, key, statistics_every, inverse,
      example_inputs, weight_sharing, precision: as in ``kfac`` (damping
      fixed or scheduled).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  model = _check_model(model)
  loss = base.check_loss(loss)
  static_zero = (not callable(damping)
                 and not isinstance(damping, damping_lib.LevenbergMarquardt)
                 and damping_lib.resolve(damping).static_zero)
  method = _method(model, loss, form, damping_split, factor_damping, fisher,
                   factor_decay, inverse_every, static_zero,
                   statistics_every, inverse, example_inputs,
                   weight_sharing)
  return core.preconditioner(model, loss, damping, method, key,
                             {"cholesky_failed": jnp.int32},
                             "kfac_preconditioner",
                             precision=_check_precision(precision))


def _check_precision(precision) -> str:
  """``precision`` resolved; ``"mixed"`` refines an NGD solve only."""
  precision = precision_lib.resolve(precision)
  if precision == "mixed":
    raise ValueError(
        'precision="mixed" is an NGD mode; use "highest", "default" or '
        '"fast" for K-FAC')
  return precision
