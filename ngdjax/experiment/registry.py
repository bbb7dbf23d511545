"""Every experiment's spec, in report order: the one list of claims.

``experiments.reproduce`` runs them and builds the report's rows from them;
each entry point runs one (``experiments/<name>.py``); the tests check that
every spec has its config file and entry point.

Adding a claim: ``ngdjax/experiment/<name>.py`` with ``SPEC =
runner.Experiment(...)`` (schema, rules, presets, ``measure``, checks), the
stubs ``configs/<name>.py`` (``get_config = SPEC.get_config``) and
``experiments/<name>.py`` (``common.main(SPEC)``), a smoke test, and the
module in ``SPECS`` below.
"""

from __future__ import annotations

from collections.abc import Sequence

from ngdjax.experiment import (
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


def select(only: str | Sequence[str] | None = None,
           specs: Sequence[Experiment] | None = None) -> list[Experiment]:
  """The specs whose claim ids are in ``only`` (``"C5,C8"``); all if empty.

  Raises:
    ValueError: naming the unknown ids and the known ones.
  """
  specs = list(SPECS if specs is None else specs)
  if not only:
    return specs
  ids = [s.strip() for s in (only.split(",") if isinstance(only, str)
                             else only) if s.strip()]
  known = [s.claim for s in specs]
  unknown = [i for i in ids if i not in known]
  if unknown:
    raise ValueError(f"only names unknown claims {unknown}; known: {known}")
  return [s for s in specs if s.claim in ids]
