"""Optimizers with one signature: ``Optimizer(init, step)``.

    opt = ngd(model, learning_rate=1.0, damping=1e-6)
    state = opt.init(params)
    params, state, info = jax.jit(opt.step)(params, state, x, y)

* ``gd``, ``optax_optimizer``: the baselines.
* ``ngd``: exact natural gradient in kernel form (Cholesky or CG), and
  ``ngd_preconditioner`` for ``optax.chain``.
* ``kfac``: K-FAC with primal or dual factor solves, the Fisher of
  cross-entropy, running factor averages for mini-batches, and
  ``kfac_preconditioner`` for ``optax.chain``.
* Damping: a number, a schedule, or ``levenberg_marquardt(...)``.

``ngd`` and ``kfac`` share one step: hyper-parameters held in the state
(a sweep compiles once), damping, the Cholesky fallback and the fault
flags of ``info``. The user guide (``docs/guide/ngd.md``,
``docs/guide/kfac.md``) and the math (``docs/math.md``) say what each
computes.
"""

from ngdjax._src.optim.base import Optimizer
from ngdjax._src.optim.core import PreconditionerState
from ngdjax._src.optim.damping import LevenbergMarquardt, levenberg_marquardt
from ngdjax._src.optim.gd import GDState, OptaxState, gd, optax_optimizer
from ngdjax._src.optim.kfac import KFACState, kfac, kfac_preconditioner
from ngdjax._src.optim.ngd import (
    NGDPreconditionerState,
    NGDState,
    ngd,
    ngd_preconditioner,
)

__all__ = [
    "GDState",
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
