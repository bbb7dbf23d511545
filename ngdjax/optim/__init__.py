"""Optimizers with one signature: ``Optimizer(init, step)``.

    opt = ngd(model, learning_rate=1.0, damping=1e-6)
    state = opt.init(params)
    params, state, info = jax.jit(opt.step)(params, state, x, y)

* ``gd``, ``optax_optimizer``: baselines (``ngdjax/_src/optim/gd.py``).
* ``ngd``: exact natural gradient in kernel form, Cholesky or CG, and
  ``ngd_preconditioner`` for ``optax.chain`` (``ngd.py``, MATH.md 2).
* ``kfac``: K-FAC with primal/dual factor solves, the Fisher of
  cross-entropy, running factor averages for mini-batches, and
  ``kfac_preconditioner`` for ``optax.chain`` (``kfac.py``, MATH.md 4, 7).
* ``ngd`` and ``kfac`` share one step (``core.py``): state
  (``CurvatureState``), hyper-parameters held in the state (a sweep compiles
  once), damping, Levenberg-Marquardt, ``info`` and the fault flags.
* Damping: a number, a schedule, or ``levenberg_marquardt(...)``
  (``damping.py``); Cholesky fallback and CG in ``solvers.py``.
"""

from ngdjax._src.optim.base import Optimizer
from ngdjax._src.optim.core import (
    DIVERGENCE_FACTOR,
    CurvatureState,
    PreconditionerState,
)
from ngdjax._src.optim.damping import LevenbergMarquardt, levenberg_marquardt
from ngdjax._src.optim.gd import GDState, OptaxState, gd, optax_optimizer
from ngdjax._src.optim.kfac import (
    KFACFactors,
    KFACInverses,
    KFACState,
    kfac,
    kfac_preconditioner,
)
from ngdjax._src.optim.ngd import (
    NGDPreconditionerState,
    NGDState,
    ngd,
    ngd_preconditioner,
)

__all__ = [
    "DIVERGENCE_FACTOR",
    "CurvatureState",
    "GDState",
    "KFACFactors",
    "KFACInverses",
    "KFACState",
    "LevenbergMarquardt",
    "NGDPreconditionerState",
    "NGDState",
    "OptaxState",
    "Optimizer",
    "PreconditionerState",
    "gd",
    "kfac",
    "kfac_preconditioner",
    "levenberg_marquardt",
    "ngd",
    "ngd_preconditioner",
    "optax_optimizer",
]
