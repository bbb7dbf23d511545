"""Run files: ``config.json``, ``metrics.jsonl`` and ``summary.json``.

Results are plain files in the workdir (the flax examples / big_vision
convention), so plots and reports are made from files and a crashed run leaves
everything it finished readable:

* ``metrics.jsonl``: one JSON object per logged step, appended and flushed
  line by line, so a run killed mid-way loses at most the line being written
  (readers skip a truncated last line).
* ``summary.json`` and ``config.json``: written atomically (a temporary file in
  the same directory, flushed, then ``os.replace``), so a reader sees either
  the old file or the new one, never a half-written one.

Non-finite floats are written as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` (strict JSON has no NaN); ``float()`` reads them back.

Example:

  >>> import tempfile
  >>> workdir = tempfile.mkdtemp()
  >>> with MetricsWriter(workdir) as writer:
  ...   writer.write({"loss": 0.5}, step=0)
  >>> read_metrics(workdir)
  [{'step': 0, 'loss': 0.5}]
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def to_jsonable(value: Any) -> Any:
  """Converts numpy/jax scalars and arrays, tuples and ConfigDicts to JSON.

  Arrays become (nested) lists; non-finite floats become strings (see the
  module docstring); mappings keep their keys as strings.
  """
  if hasattr(value, "to_dict") and callable(value.to_dict):
    value = value.to_dict()  # ml_collections.ConfigDict
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, Path):
    return str(value)
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return _float(float(value))
  if hasattr(value, "shape") and hasattr(value, "dtype"):  # np / jax array
    arr = np.asarray(value)
    if arr.ndim == 0:
      return to_jsonable(arr.item())
    return [to_jsonable(v) for v in arr]
  if value is None or isinstance(value, str):
    return value
  raise TypeError(f"cannot write {type(value).__name__} to JSON: {value!r}")


def _float(v: float) -> float | str:
  if math.isnan(v):
    return "NaN"
  if math.isinf(v):
    return "Infinity" if v > 0 else "-Infinity"
  return v


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
  """Writes ``obj`` as JSON to ``path`` atomically (temp file + os.replace).

  The temporary file lives in the destination directory, so ``os.replace`` is
  a rename within one file system (atomic on POSIX and Windows).
  """
  path = Path(path)
  text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True,
                    allow_nan=False)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def read_json(path: str | os.PathLike) -> Any:
  with open(path) as f:
    return json.load(f)


class MetricsWriter:
  """Appends one JSON object per logged step to ``metrics.jsonl``.

  Each ``write`` flushes the line to the operating system, so a reader (or a
  rerun after a crash) sees every completed step.

  Args:
    workdir: run directory (must exist).
    keep_units: when given, lines tagged with a ``unit`` not in this set are
      dropped from an existing file before appending. A resumed run passes
      its finished units, so the partial metrics of an interrupted unit are
      not duplicated when that unit is redone.
  """

  def __init__(self, workdir: str | os.PathLike,
               keep_units: Iterable[str] | None = None):
    self.path = Path(workdir) / METRICS_FILE
    if keep_units is not None and self.path.exists():
      keep = set(keep_units)
      records = [r for r in read_metrics(self.path.parent)
                 if r.get("unit") is None or r["unit"] in keep]
      lines = "".join(_line(r) for r in records)
      _write_text_atomic(self.path, lines)
    self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()

  def write(self, metrics: Mapping[str, Any], step: int | None = None,
            unit: str | None = None) -> None:
    """Appends ``{"step": step, "unit": unit, **metrics}`` and flushes."""
    record: dict[str, Any] = {}
    if step is not None:
      record["step"] = int(step)
    if unit is not None:
      record["unit"] = unit
    record.update(metrics)
    self._file.write(_line(record))
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _line(record: Mapping[str, Any]) -> str:
  return json.dumps(to_jsonable(record), allow_nan=False) + "\n"


def _write_text_atomic(path: Path, text: str) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads ``metrics.jsonl``; a truncated last line (a crash) is skipped.

  A malformed line anywhere else is corruption, not a crash, and raises.
  ``read_metrics_checked`` also returns the skipped line.
  """
  return read_metrics_checked(workdir)[0]


def read_metrics_checked(
    workdir: str | os.PathLike,
) -> tuple[list[dict[str, Any]], str | None]:
  """``(records, truncated)``: ``truncated`` is the skipped last line or None.

  Raises:
    ValueError: naming the file and line, for a malformed line that is not
      the last one.
  """
  path = Path(workdir) / METRICS_FILE
  if not path.exists():
    return [], None
  lines = path.read_text(errors="replace").splitlines()
  records = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        # The line being written when the run was interrupted.
        return records, line
      raise ValueError(f"{path}: line {i + 1} is not valid JSON: {e}") from e
    if not isinstance(record, dict):
      raise ValueError(f"{path}: line {i + 1} is not a JSON object")
    records.append(record)
  return records, None


def write_config(workdir: str | os.PathLike, config: Any) -> Path:
  """Writes ``config.json`` atomically."""
  return write_json_atomic(Path(workdir) / CONFIG_FILE, config)


def write_summary(workdir: str | os.PathLike,
                  summary: Mapping[str, Any]) -> Path:
  """Writes ``summary.json`` atomically."""
  return write_json_atomic(Path(workdir) / SUMMARY_FILE, summary)


def read_summary(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The run's ``summary.json``, or ``None`` if it has not been written."""
  path = Path(workdir) / SUMMARY_FILE
  return read_json(path) if path.exists() else None
