"""Analysis several claims share: width thresholds, path deviations and the
theory's constants evaluated at measured figures.

* ``threshold_width`` / ``holds_past_width``: from which width on a property
  holds ("past some width" needs ``m*`` below the widest width tested, so
  the widest width alone never makes it true).
* ``segment_deviation``: how far a path strays from the straight segment
  between its ends (C10, C11).
* The constants of Theorems 1-2 and Lemmas 7-8 (C1-C4): Condition 2's ``C``
  of a trajectory, the largest step the theorems allow for it, the Lemma 7
  Jacobian bound and the Lemma 8 flip bound at a measured radius.

Conventions (``docs/math.md``, "Conventions"): where the paper writes
``lambda_0`` for ``lambda_min(G(0))`` (Conditions 1-2, Lemmas 2-3) the code
says ``lambda_min(G(0))``; ``lambda_0`` is ``lambda_min(G_inf)``."""

from __future__ import annotations

import functools
import math

import numpy as np

from ngdjax.experiment.runner import Run, unit_key


def threshold_width(widths, ok) -> float | None:
  """Smallest width ``m*`` with ``ok`` true at every point of width >= m*.

  ``None`` when a point at the widest width fails.
  """
  widths = np.asarray(widths, float)
  ok = np.asarray(ok, bool)
  best = None
  for m in sorted(set(widths.tolist()), reverse=True):
    if not ok[widths >= m].all():
      break
    best = m
  return best


def holds_past_width(widths, ok) -> bool:
  """"Holds past some width": ``threshold_width`` exists and is below the
  widest width tested (at least two widths hold, the widest alone is not
  enough)."""
  m_star = threshold_width(widths, ok)
  return m_star is not None and m_star < max(np.asarray(widths, float))


def segment_deviation(points, start, end) -> np.ndarray:
  """Distance of each row of ``points`` from the segment ``[start, end]``.

  Args:
    points: ``(T, D)``.
    start, end: ``(D,)``, distinct.

  Returns:
    ``(T,)`` Euclidean distances (not normalised).
  """
  points = np.asarray(points, np.float64)
  start = np.asarray(start, np.float64)
  seg = np.asarray(end, np.float64) - start
  rel = points - start
  s = np.clip(rel @ seg / (seg @ seg), 0.0, 1.0)
  return np.linalg.norm(rel - s[:, None] * seg, axis=1)


def condition2_constant(jacobian_change: float,
                        lambda_min_g0: float) -> float:
  """``C = 3 ||J - J(0)||_2 / sqrt(lambda_min(G(0)))`` (Condition 2).

  Condition 2 asks ``||J - J(0)||_2 <= (C / 3) sqrt(lambda_min(G(0)))``
  over the whole ball of radius ``R``; this is the smallest ``C`` that
  holds at the measured iterates, a lower estimate of the ball's.
  """
  if lambda_min_g0 <= 0:
    return math.inf
  return 3.0 * float(jacobian_change) / math.sqrt(lambda_min_g0)


def theorem1_eta_max(c: float) -> float:
  """``(1 - 2C) / (1 + C)^2``, Theorem 1's largest step; 0 for ``C >= 1/2``."""
  return (1.0 - 2.0 * c) / (1.0 + c) ** 2 if c < 0.5 else 0.0


def theorem2_eta_max(c: float, mu: float, lipschitz: float) -> float:
  """``2 / (mu + L) * (1 - (1 + kappa) C) / (1 + C)^2``, ``kappa = L / mu``.

  Theorem 2's largest step (appendix eqn. 33); 0 when ``(1 + kappa) C >=
  1``.
  """
  kappa = lipschitz / mu
  if (1.0 + kappa) * c >= 1.0:
    return 0.0
  return 2.0 / (mu + lipschitz) * (1.0 - (1.0 + kappa) * c) / (1.0 + c) ** 2


def lemma7_bound(n: int, radius: float, nu: float, delta: float,
                 width: float) -> float:
  """``sqrt(2 n R^{2/3} / (nu^{2/3} delta^{2/3} m^{1/3}))`` (Lemma 7).

  Bounds ``||J - J(0)||_2`` over the ball ``||w - w(0)|| <= R`` with
  probability ``1 - delta``.
  """
  return math.sqrt(2.0 * n * radius ** (2 / 3)
                   / ((nu * delta) ** (2 / 3) * width ** (1 / 3)))


def lemma8_flip_bound(radius: float, nu: float, delta: float,
                      width: float) -> float:
  """``2 k / m`` with ``k = (R m / (nu delta))^{2/3}`` (Lemmas 7-8).

  The proof of Lemma 8 (appendix eqn. 46) shows that no example has ``2k``
  or more flipped neurons inside the ball of radius ``R`` when Lemma 7's
  event holds (probability ``1 - delta``): the flipped fraction of the
  ``(n, m)`` activation pattern is at most ``2 (R / (nu delta))^{2/3}
  m^{-1/3}``. Not capped at 1: the bound says nothing (is vacuous) below
  ``m = 8 (R / (nu delta))^2``, and the figures show how far it is from 1.
  """
  return 2.0 * (radius / (nu * delta)) ** (2 / 3) / width ** (1 / 3)


# --------------------------------------------------------------------------
# C10, C11: the plane a path is drawn in.
# --------------------------------------------------------------------------


def excursion_plane(points, along) -> tuple[np.ndarray, np.ndarray]:
  """Unit vectors ``e1`` along ``along`` and ``e2`` towards the largest
  excursion of the rows of ``points`` orthogonal to ``e1``: the plane in
  which a path (GD's, here) looks most unlike the straight one."""
  e1 = along / np.linalg.norm(along)
  ortho = points - np.outer(points @ e1, e1)
  e2 = ortho[np.argmax(np.linalg.norm(ortho, axis=1))]
  return e1, e2 / np.linalg.norm(e2)


# --------------------------------------------------------------------------
# C5, C8: one unit per swept value, holding all its repetitions.
# --------------------------------------------------------------------------


def repetition_sweep(r: Run, name: str, values, reps: int, rows,
                     work) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Runs (or reloads) a unit ``unit_key(name=v)`` per ``v`` in ``values``:
  ``rows(v)`` yields ``reps`` dicts of floats, logged with ``name=v, rep=s``;
  ``work(v)`` is its share of the progress. Returns ``v`` and each row key
  at every repetition (flat arrays, in the order of ``values``)."""
  shares = {v: work(v) for v in values}
  r.start_progress(len(values), interval_s=2.0, work=sum(shares.values()))

  def one(v, log):
    out = {name: v}
    for s, row in enumerate(rows(v)):
      log(**{name: v}, rep=s, **row)
      for k, value in row.items():
        out.setdefault(k, []).append(value)
    return out

  units = [r.unit(unit_key(**{name: v}), functools.partial(one, v),
                  work=shares[v]) for v in values]
  at = np.repeat([u[name] for u in units], reps).astype(float)
  return at, {k: np.concatenate([u[k] for u in units])
              for k in units[0] if k != name}
