"""Every experiment's spec, in report order: the one list of claims.

``experiments.reproduce`` runs them and builds the report's rows from them;
each ``experiments/<name>.py`` is one of them (and its entry point); the
tests check that every spec has its config file.

Adding a claim: ``experiments/<name>.py`` with ``SPEC =
ngdjax.experiment.Experiment(...)`` (rules, ``measure``, checks) and the
``__main__`` block, ``configs/<name>.py`` with ``get_config(preset)`` (the
values), a smoke test, and the module in ``SPECS`` below.
"""

from __future__ import annotations

from experiments import (
    figure1,
    forster_convergence,
    general_loss,
    generalization,
    gram_limit,
    jacobian_stability,
    kfac_forster,
    lambda0_vs_n,
    linearized_paths,
    ngd_rate,
    train,
    training_conditions,
    training_curves,
)
from ngdjax.experiment.runner import Experiment

SPECS: tuple[Experiment, ...] = tuple(m.SPEC for m in (
    ngd_rate, general_loss, training_conditions, jacobian_stability,
    gram_limit, kfac_forster, forster_convergence, lambda0_vs_n,
    generalization, linearized_paths, figure1, training_curves,
    # A demonstration beyond the paper's claims.
    train,
))
