"""Claim checks as data: a verdict is a pure function of the measured figures.

A claim's checks are a tuple of ``Check`` s, each a conjunction of ``(key,
op, bound)`` conditions on the ``measured`` dict of its ``summary.json``,
evaluated by ``evaluate``. The experiment measures; ``evaluate`` judges;
a test can hand ``evaluate`` a made-up measurement (a known-bad one must
FAIL) without running anything.

A check is ``kind="theorem"`` when it tests a theorem inside its own
hypotheses (measured to hold in the runs it judges) and
``kind="observation"`` when it tests what the paper predicts or the theory
suggests outside them (e.g. "the rate holds for wide nets" at widths where
the measured Condition 2 constant is above the theorem's range).

Example:

  >>> c = Check("rate", (("max_ratio", "<=", "bound"),), "ratio <= bound")
  >>> evaluate((c,), {"max_ratio": 0.5, "bound": 0.75})
  {'rate': True}
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

_OPS = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
}

THEOREM = "theorem"
OBSERVATION = "observation"


@dataclasses.dataclass(frozen=True)
class Check:
  """One named pass condition of a claim.

  Attributes:
    name: the check's name in ``summary["checks"]``.
    conditions: ``(key, op, bound)`` triples, all of which must hold:
      ``measured[key] op bound`` (a tuple ``key`` walks nested dicts:
      ``("steps_to_97", "ngd")``) with ``op`` in ``<=, <, >=, >, ==`` or
      ``"is"`` (``measured[key] is bound``, for booleans). ``bound`` is a
      number, or a string naming another measured key. A missing key, a
      ``None`` or a NaN on either side makes the condition false.
    text: the criterion in words (for the report).
    kind: ``"theorem"`` (inside the theorem's hypotheses) or
      ``"observation"``.
    rtol: relative slack on a numeric bound: ``<=`` and ``<`` compare with
      ``bound (1 + rtol)`` (a ``bound`` near 1: a relative, not absolute,
      allowance), ``>=`` and ``>`` with ``bound (1 - rtol)``.
  """

  name: str
  conditions: tuple[tuple[str, str, Any], ...]
  text: str = ""
  kind: str = OBSERVATION
  rtol: float = 0.0


def _lookup(measured: Mapping[str, Any], key: str | tuple[str, ...]) -> Any:
  """``measured[key]``; a tuple key walks nested dicts; missing: ``None``."""
  for part in (key if isinstance(key, tuple) else (key,)):
    if not isinstance(measured, Mapping):
      return None
    measured = measured.get(part)
  return measured


def _value(measured: Mapping[str, Any], ref: Any) -> Any:
  if isinstance(ref, (str, tuple)):
    return _lookup(measured, ref)
  return ref


def _bad(v: Any) -> bool:
  return v is None or (isinstance(v, float) and math.isnan(v))


def holds(check: Check, measured: Mapping[str, Any]) -> bool:
  """Whether every condition of ``check`` holds on ``measured``."""
  for key, op, bound in check.conditions:
    value = _lookup(measured, key)
    ref = _value(measured, bound)
    if op == "is":
      if value is not ref:
        return False
      continue
    if op not in _OPS:
      raise ValueError(f"check {check.name!r}: unknown op {op!r}")
    if _bad(value) or _bad(ref) or isinstance(value, bool):
      return False
    if check.rtol and op in ("<=", "<"):
      ref = ref * (1.0 + check.rtol) if ref >= 0 else ref * (1 - check.rtol)
    elif check.rtol and op in (">=", ">"):
      ref = ref * (1.0 - check.rtol) if ref >= 0 else ref * (1 + check.rtol)
    if not _OPS[op](float(value), float(ref)):
      return False
  return True


def evaluate(checks: Sequence[Check],
             measured: Mapping[str, Any]) -> dict[str, bool]:
  """``{name: holds}`` for every check, in order."""
  names = [c.name for c in checks]
  if len(set(names)) != len(names):
    raise ValueError(f"duplicate check names in {names}")
  return {c.name: holds(c, measured) for c in checks}


def kinds(checks: Sequence[Check]) -> dict[str, str]:
  """``{name: kind}``: which checks are inside the hypotheses."""
  return {c.name: c.kind for c in checks}


def criteria_text(checks: Sequence[Check]) -> str:
  """The checks' criteria, each tagged with its kind, for the report."""
  return "; ".join(f"{c.name} [{c.kind}]: {c.text}" for c in checks)
