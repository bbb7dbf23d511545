"""Start-of-run checks: configs against their defaults, workdirs, config files.

A run should fail in its first second, with the offending name, rather than
after an hour on a typo. ``ml_collections.ConfigDict`` only guards attribute
*access* to unknown fields; a config file (or preset) that *sets* a
misspelled field builds a valid ConfigDict whose field the experiment never
reads. ``check_config`` compares a config field by field with the
experiment's defaults and names every unknown, missing or mistyped field.

Example:

  >>> import ml_collections
  >>> defaults = ml_collections.ConfigDict({"width": 8, "seed": 0})
  >>> try:
  ...   check_config(ml_collections.ConfigDict({"widht": 8, "seed": 0}),
  ...                defaults)
  ... except ValueError as e:
  ...   print(str(e).split(";")[0])
  config.widht is not a field of this experiment (did you mean config.width?)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import operator
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections


def config_load_error(config: Any) -> BaseException | None:
  """The error a ``--config`` flag hit while loading its file, if any.

  ``ml_collections.config_flags`` does not fail when the file is missing or
  raises: it stores an object that raises on first attribute access. That
  error (which names the path) is returned here, so that the run can stop
  with it, not with a complaint about the config's type.
  """
  if type(config).__name__ == "_ErrorConfig":
    try:
      return object.__getattribute__(config, "_error")
    except AttributeError:
      return RuntimeError("the config file could not be loaded")
  return None


def check_loaded(config: Any, name: str = "--config") -> Any:
  """Raises ``ValueError`` with the load error of a failed ``--config``."""
  error = config_load_error(config)
  if error is not None:
    raise ValueError(
        f"{name} could not be loaded: {error}; check the path (and the "
        "preset after ':'), e.g. --config=configs/gram_limit.py:small"
    ) from error
  return config


def _as_dict(config: Any) -> dict[str, Any]:
  check_loaded(config)
  if isinstance(config, ml_collections.ConfigDict):
    return config.to_dict()
  if isinstance(config, Mapping):
    return dict(config)
  raise ValueError(
      f"config must be an ml_collections.ConfigDict, got "
      f"{type(config).__name__}"
  )


def _kind(value: Any) -> str:
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, (int, float)):
    return "number"
  if isinstance(value, str):
    return "str"
  if isinstance(value, (list, tuple)):
    return "sequence"
  if isinstance(value, Mapping):
    return "dict"
  return "other"


def check_config(config: Any, defaults: Any, *,
                 prefix: str = "config") -> None:
  """Checks that ``config`` has exactly the fields of ``defaults``.

  Every field is compared recursively; one ``ValueError`` lists all
  problems: fields not in the defaults (with the closest known name),
  fields missing from ``config``, and values whose kind (number, bool, str,
  sequence, dict) differs from the default's. ``None`` in the defaults means
  "optional, any kind".

  Args:
    config: the ConfigDict (or dict) a run was given.
    defaults: the experiment's default ConfigDict (its schema).
    prefix: name used for the top level in messages.

  Raises:
    ValueError: naming each offending field, e.g. ``config.widht``.
  """
  problems = _compare(_as_dict(config), _as_dict(defaults), prefix)
  if problems:
    raise ValueError("; ".join(problems))


def _compare(given: dict, known: dict, prefix: str) -> list[str]:
  problems = []
  for name in given:
    if name not in known:
      close = difflib.get_close_matches(name, list(known), n=1)
      hint = f" (did you mean {prefix}.{close[0]}?)" if close else ""
      problems.append(
          f"{prefix}.{name} is not a field of this experiment{hint}"
      )
  for name, default in known.items():
    path = f"{prefix}.{name}"
    if name not in given:
      problems.append(f"{path} is missing")
      continue
    value = given[name]
    if default is None or value is None:
      continue
    if isinstance(default, Mapping) and isinstance(value, Mapping):
      problems.extend(_compare(dict(value), dict(default), path))
      continue
    if _kind(value) != _kind(default):
      problems.append(
          f"{path} must be a {_kind(default)} like the default "
          f"{default!r}, got {value!r}"
      )
  return problems


_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}


@dataclasses.dataclass(frozen=True)
class Rule:
  """A range a config field must lie in, checked before any work.

  Attributes:
    field: ``"n"``; ``"len(widths)"`` for a sequence's length;
      ``"each(etas)"`` for every element of a sequence.
    op: ``<``, ``<=``, ``>``, ``>=``; ``"in"`` (``bound`` is the collection
      of allowed values); ``"distinct"`` or ``"increasing"`` (a sequence;
      ``bound`` unused).
    bound: a number, or the name of another config field (``"n"``).
    why: the reason, appended to the message.

  Example:

    >>> import ml_collections
    >>> c = ml_collections.ConfigDict({"learning_rate": 1.5})
    >>> try:
    ...   check_rules(c, (Rule("learning_rate", "<=", 1, "Theorem 1"),))
    ... except ValueError as e:
    ...   print(e)
    config.learning_rate must be <= 1 (Theorem 1), got 1.5
  """

  field: str
  op: str
  bound: Any = None
  why: str = ""

  def problem(self, config: Any) -> str | None:
    """The message when ``config`` breaks the rule, else ``None``."""
    kind, _, rest = self.field.partition("(")
    name = rest.rstrip(")") if rest else kind
    value = config[name]
    shown = tuple(value) if isinstance(value, (list, tuple)) else value
    if self.op in ("distinct", "increasing"):
      values = list(value)
      good = (len(set(values)) == len(values) if self.op == "distinct"
              else values == sorted(values))
      what = f"config.{name} must be {self.op}"
    else:
      bound = self.bound
      shown_bound = bound
      if isinstance(bound, str):
        bound = config[bound]
        shown_bound = f"config.{self.bound} = {bound}"
      values = ([len(value)] if kind == "len" else list(value)
                if kind == "each" else [value])
      if self.op == "in":
        good = all(v in bound for v in values)
        shown_bound = tuple(bound)
      else:
        good = all(_COMPARE[self.op](v, bound) for v in values)
      subject = {"len": f"len(config.{name})",
                 "each": f"every element of config.{name}"}.get(
                     kind if rest else "", f"config.{name}")
      what = f"{subject} must be {self.op} {shown_bound}"
    if good:
      return None
    why = f" ({self.why})" if self.why else ""
    return f"{what}{why}, got {shown!r}"


def check_rules(config: Any, rules: Sequence[Rule]) -> None:
  """Raises one ``ValueError`` naming every field that breaks its rule."""
  problems = [p for p in (rule.problem(config) for rule in rules) if p]
  if problems:
    raise ValueError("; ".join(problems))


def with_preset(config: ml_collections.ConfigDict, preset: str | None,
                **presets: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """``config`` (the full run) with the overrides of preset ``preset``.

  A config file's ``get_config(preset)`` ends with it::

    return with_preset(c, preset, small=dict(n=32, reps=4))

  ``"full"`` is always a preset (no overrides unless ``presets`` has one);
  ``None`` or ``""`` means ``"full"``.

  Raises:
    ValueError: an unknown preset, naming the known ones.
  """
  name = preset or "full"
  names = list(presets) + (["full"] if "full" not in presets else [])
  if name not in names:
    quoted = [f'"{p}"' for p in names]
    choices = (", ".join(quoted[:-1]) + " or " + quoted[-1]
               if len(quoted) > 1 else quoted[0])
    raise ValueError(f"unknown preset {preset!r}; use {choices}")
  for field, value in presets.get(name, {}).items():
    config[field] = value
  return config


def load_config_file(spec: str | os.PathLike) -> ml_collections.ConfigDict:
  """Loads ``path/to/config.py[:arg]`` like ``config_flags`` does.

  Imports the file and returns ``get_config(arg)`` (``get_config()`` when no
  ``:arg`` is given). Lets tests and the reproduction runner load the same
  presets as the command line without absl flags.

  Args:
    spec: a path to a Python file, optionally followed by ``:preset``.

  Returns:
    The ConfigDict the file's ``get_config`` returns.
  """
  spec = str(spec)
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} does not exist (from {spec!r})")
  name = "_ngdjax_config_" + Path(path).stem
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[name] = module
  try:
    module_spec.loader.exec_module(module)
  finally:
    sys.modules.pop(name, None)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} has no get_config()")
  return module.get_config(arg) if arg else module.get_config()


def check_workdir(workdir: str | os.PathLike) -> Path:
  """Creates ``workdir`` if needed and checks that files can be written there.

  Writes and removes a probe file, so permissions, read-only mounts and a
  path through a regular file all fail here, at the start of the run, not
  when the first result is saved.

  Returns:
    The workdir as an absolute ``Path``.

  Raises:
    ValueError: naming the workdir and the reason.
  """
  if workdir is None or str(workdir) == "":
    raise ValueError("workdir must be a directory path, got an empty value")
  path = Path(workdir).expanduser().absolute()
  try:
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix=".write_probe.")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise ValueError(
        f"workdir {str(path)!r} is not a writable directory: {e}; "
        "pass a directory you can write to"
    ) from e
  return path


def initialize_distributed(enabled: bool, **kwargs: Any) -> bool:
  """Calls ``jax.distributed.initialize(**kwargs)`` when ``enabled``.

  Entry points call this first (before any JAX computation), from their
  ``--jax_distributed`` flag. Without arguments JAX reads the coordinator
  address and process ids from the cluster environment (SLURM, Kubernetes,
  Cloud TPU).

  Returns:
    Whether JAX was initialised for multiple processes.
  """
  if not enabled:
    return False
  import jax

  jax.distributed.initialize(**kwargs)
  return True
