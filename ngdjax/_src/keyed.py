"""Functions that compare by value: builders' closures keyed by arguments.

``Model`` s and ``Loss`` es are static arguments of jitted functions, and
their fields are closures, which compare by identity: two
``two_layer_relu(64)`` calls (or two ``squared_log_cosh(1.0)``) would be two
static arguments and compile twice. The builders wrap each closure in a
``KeyedFunction`` keyed by ``(builder, normalised arguments, role)``, so
equal builds compare and hash equal.

Why per function rather than a ``key`` field on the NamedTuple, or memoised
builders: a whole-object key would survive ``_replace`` (which
``linearize`` and users call to swap ``apply``), so a modified model would
compare equal to its original and ``jit`` would silently reuse the
original's trace; memoised builders would keep a process-wide cache (hidden
state, and a recompile again once an entry is evicted). Keyed functions
keep ``Model`` and ``Loss`` plain NamedTuples compared field by field:
replacing any field gives an unequal object. User-written functions are
not wrapped and keep identity semantics.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class KeyedFunction:
  """A builder's closure that compares and hashes by ``key``.

  ``key`` is ``(builder, normalised arguments..., role)``; builders are
  deterministic in their arguments, so equal keys mean equal functions.
  """

  def __init__(self, fn: Callable, key: tuple):
    self._fn = fn
    self._key = key
    functools.update_wrapper(self, fn)

  def __call__(self, *args, **kwargs):
    return self._fn(*args, **kwargs)

  def __eq__(self, other):
    if not isinstance(other, KeyedFunction):
      return NotImplemented
    return self._key == other._key

  def __hash__(self):
    return hash(self._key)

  def __repr__(self):
    return f"<{self._key[0]} {self._key[-1]} {self._key[1:-1]}>"


def by_value(key: tuple | None, **fns: Callable | None) -> dict[str, Any]:
  """``fns`` wrapped as ``KeyedFunction``s keyed by ``key + (name,)``.

  With ``key=None`` (arguments that cannot be compared by value, e.g. an
  unhashable activation) the functions are returned as they are.
  """
  if key is not None:
    try:
      hash(key)
    except TypeError:
      key = None
  if key is None:
    return fns
  return {name: None if fn is None else KeyedFunction(fn, (*key, name))
          for name, fn in fns.items()}
