"""Resumable units of work: a finished unit is saved once and never redone.

An experiment is a list of independent units (a width, a seed, a sample
size). Each finished unit's result is written atomically to
``<workdir>/units/<key>.json``; a rerun of an interrupted run skips every
unit that has a file and reloads its result, so no finished result is lost
and only the interrupted unit is recomputed. Units are keyed by strings such
as ``"width=64/rep=0"``, and their randomness is derived from the key (see
``runner.seed_key``), so a resumed run computes exactly what an uninterrupted
one would have.

A unit file that cannot be read back (truncated or corrupt JSON: a disk
filled up, a file copied half-way) is treated as unfinished: ``finished``
logs a warning naming the file, renames it to ``<name>.corrupt`` (kept for
inspection) and the unit is recomputed. ``load`` of such a file raises
``ValueError`` naming it.

Example:

  >>> import tempfile
  >>> store = UnitStore(tempfile.mkdtemp())
  >>> store.save("width=64/rep=0", {"error": 0.1})
  >>> store.is_done("width=64/rep=0"), store.load("width=64/rep=0")
  (True, {'error': 0.1})
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from absl import logging

from ngdjax.experiment import metrics

UNITS_DIR = "units"


def _filename(key: str) -> str:
  # Readable and collision-free: the sanitised key plus a short hash of the
  # exact key (two keys can sanitise to the same string).
  safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", key)[:80]
  digest = hashlib.sha1(key.encode()).hexdigest()[:8]
  return f"{safe}.{digest}.json"


class UnitStore:
  """Finished units of one run, one JSON file each under ``units/``."""

  def __init__(self, workdir: str | os.PathLike):
    self.dir = Path(workdir) / UNITS_DIR
    self.dir.mkdir(parents=True, exist_ok=True)

  def path(self, key: str) -> Path:
    return self.dir / _filename(key)

  def is_done(self, key: str) -> bool:
    return self.path(key).exists()

  def save(self, key: str, result: Mapping[str, Any]) -> None:
    """Records ``key`` as finished with ``result`` (atomic write)."""
    metrics.write_json_atomic(self.path(key), {"key": key,
                                               "result": dict(result)})

  def load(self, key: str) -> dict[str, Any]:
    record = _read_unit(self.path(key))
    if record.get("key") != key:
      raise ValueError(
          f"unit file {self.path(key)} holds {record.get('key')!r}, "
          f"not {key!r}"
      )
    return record["result"]

  def discard(self, key: str) -> None:
    """Marks ``key`` as unfinished (its result will be recomputed)."""
    self.path(key).unlink(missing_ok=True)

  def finished(self) -> list[str]:
    """Keys of all finished units; unreadable unit files are set aside.

    A corrupt file is renamed to ``<name>.corrupt`` with a warning, so its
    unit counts as unfinished and is recomputed (module docstring).
    """
    keys = []
    for path in sorted(self.dir.glob("*.json")):
      try:
        keys.append(_read_unit(path)["key"])
      except ValueError as e:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        logging.warning("%s; moved to %s, the unit will be recomputed", e,
                        aside.name)
    return keys


def _read_unit(path: Path) -> dict[str, Any]:
  """A unit file's ``{"key", "result"}``; ``ValueError`` naming a bad file."""
  try:
    record = metrics.read_json(path)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(
        f"unit file {path} is corrupt or truncated ({e})"
    ) from e
  if (not isinstance(record, dict) or not isinstance(record.get("key"), str)
      or not isinstance(record.get("result"), dict)):
    raise ValueError(
        f"unit file {path} is not a unit record (needs \"key\" and "
        "\"result\")"
    )
  return record
