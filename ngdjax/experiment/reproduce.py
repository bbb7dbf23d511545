"""Runs a list of experiments and writes ``report.md``.

One row per ``Experiment`` (``experiments.registry.SPECS`` holds C1..C12
and the D1 demonstration): what is measured, the bound or expectation,
PASS / FAIL (or ERROR) and links to the figures. Each experiment runs in
its own sub-workdir ``<workdir>/<claim>_<name>_<preset>`` with the preset
loaded from ``configs/<name>.py`` (as on the command line); a rerun skips
every experiment whose ``summary.json`` is there for the same config (and an
interrupted experiment resumes from its finished units).
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from absl import logging

from ngdjax.experiment import config as config_lib
from ngdjax.experiment import metrics
from ngdjax.experiment.progress import Progress, format_seconds
from ngdjax.experiment.runner import Experiment

REPORT_FILE = "report.md"
REPORT_JSON = "report.json"


def select(only: str | Sequence[str] | None,
           specs: Sequence[Experiment]) -> list[Experiment]:
  """The specs whose claim ids are in ``only`` (``"C5,C8"``); all if empty.

  Raises:
    ValueError: naming the unknown ids and the known ones.
  """
  specs = list(specs)
  if not only:
    return specs
  ids = [s.strip() for s in (only.split(",") if isinstance(only, str)
                             else only) if s.strip()]
  known = [s.claim for s in specs]
  unknown = [i for i in ids if i not in known]
  if unknown:
    raise ValueError(f"only names unknown claims {unknown}; known: {known}")
  return [s for s in specs if s.claim in ids]


def _finished(subdir: Path, config) -> dict[str, Any] | None:
  """The summary of a finished run of ``config`` in ``subdir``, if any."""
  summary = metrics.read_summary(subdir)
  config_path = subdir / metrics.CONFIG_FILE
  if summary is None or not config_path.exists():
    return None
  if metrics.read_json(config_path) != metrics.to_jsonable(config):
    return None
  return summary


def run(workdir: str | os.PathLike, specs: Sequence[Experiment],
        configs_dir: str | os.PathLike, *, full: bool = False,
        only: str | Sequence[str] | None = None) -> dict[str, Any]:
  """Runs ``specs`` and writes ``report.md``.

  Args:
    workdir: directory for the report and one sub-workdir per experiment.
    specs: the experiments, in report order.
    configs_dir: the directory of the ``<name>.py`` config files.
    full: use each config's full preset instead of ``small``.
    only: claim ids to run (``"C5,C8"`` or a sequence); default all.

  Returns:
    ``{"rows": [...], "counts": {...}, "report": path}``; each row has
    ``claim``, ``title``, ``status`` (PASS, FAIL or ERROR),
    ``measured``, ``expectation``, ``figures`` and ``workdir``.
  """
  workdir = config_lib.check_workdir(workdir)
  specs = select(only, specs)
  configs_dir = Path(configs_dir)
  preset = "full" if full else "small"
  if not configs_dir.is_dir():
    raise ValueError(f"configs_dir {str(configs_dir)!r} is not a directory; "
                     "pass the repository's configs/")
  # Load every config before running anything: a broken one fails now.
  configs = {
      s.claim: config_lib.load_config_file(
          f"{configs_dir / (s.name + '.py')}{'' if full else ':small'}")
      for s in specs
  }
  start = time.monotonic()
  progress = Progress(len(specs), "reproduce", interval_s=0.0)
  rows = []
  for claim in specs:
    subdir = workdir / f"{claim.claim}_{claim.name}_{preset}"
    config = configs[claim.claim]
    summary = _finished(subdir, config)
    if summary is not None:
      logging.info("%s: finished earlier in %s, skipped", claim.claim,
                   subdir)
      progress.skip()
      rows.append(_row(claim, "PASS" if summary["passed"] else "FAIL",
                       summary=summary, subdir=subdir, workdir=workdir,
                       skipped=True))
      continue
    logging.info("%s: running %s (%s preset) in %s", claim.claim,
                 claim.name, preset, subdir)
    t0 = time.monotonic()
    try:
      summary = claim.run(config, subdir)
    except Exception as e:  # noqa: BLE001 - reported in the row, not lost
      logging.error("%s failed:\n%s", claim.claim, traceback.format_exc())
      rows.append(_row(claim, "ERROR", f"{type(e).__name__}: {e}",
                       subdir=subdir, workdir=workdir,
                       elapsed=time.monotonic() - t0))
      progress.update(claim=claim.claim)
      continue
    rows.append(_row(claim, "PASS" if summary["passed"] else "FAIL",
                     summary=summary, subdir=subdir, workdir=workdir,
                     elapsed=time.monotonic() - t0))
    progress.update(claim=claim.claim, status=rows[-1]["status"])
  counts = {s: sum(r["status"] == s for r in rows)
            for s in ("PASS", "FAIL", "ERROR")}
  result = {"preset": preset, "rows": rows, "counts": counts,
            "elapsed_s": time.monotonic() - start}
  report = workdir / REPORT_FILE
  _write_report(report, result)
  metrics.write_json_atomic(workdir / REPORT_JSON, result)
  result["report"] = str(report)
  return result


def _row(claim: Experiment, status: str, note: str = "", *,
         summary: dict[str, Any] | None = None, subdir: Path | None = None,
         workdir: Path | None = None, elapsed: float | None = None,
         skipped: bool = False) -> dict[str, Any]:
  rel = None if subdir is None else os.path.relpath(subdir, workdir)
  figures = []
  if summary is not None:
    figures = [f"{rel}/{f}" for f in summary.get("figures", [])]
  return {
      "claim": claim.claim,
      "title": claim.row,
      "status": status,
      "measured": (summary or {}).get("measured_text") or "not measured",
      "expectation": (summary or {}).get("expectation") or claim.title,
      "checks": (summary or {}).get("checks", {}),
      "check_kinds": ((summary or {}).get("details") or {}).get(
          "check_kinds", {}),
      "note": note,
      "figures": figures,
      "workdir": rel,
      "elapsed_s": elapsed if elapsed is not None
                   else (summary or {}).get("elapsed_s"),
      "skipped": skipped,
  }


def _cell(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _write_report(path: Path, result: dict[str, Any]) -> None:
  counts = result["counts"]
  lines = [
      "# ngdjax: reproduction report",
      "",
      f"Preset: **{result['preset']}**; "
      f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['ERROR']} "
      f"ERROR; "
      f"{format_seconds(result['elapsed_s'])} in this invocation "
      f"(jax {jax.__version__}, "
      f"{'float64' if jax.config.jax_enable_x64 else 'float32'}, "
      f"{jax.default_backend()}, "
      f"{datetime.datetime.now().isoformat(timespec='seconds')}).",
      "",
      "A check is PASS only when the measured figures meet the criterion "
      "stated in the expectation column; a FAIL keeps its numbers. Each "
      "check is marked [theorem] when it tests a theorem inside its "
      "measured hypotheses, [observation] when it tests the paper's "
      "prediction outside them (or an empirical claim).",
      "",
      "| Claim | Measured | Bound / expectation | Result | Figures |",
      "|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    status = r["status"]
    if r["note"]:
      status = f"{status}: {r['note']}"
    figs = ", ".join(f"[{Path(f).stem}]({f})" for f in r["figures"])
    lines.append(
        f"| **{r['claim']}** {_cell(r['title'])} | {_cell(r['measured'])} | "
        f"{_cell(r['expectation'])} | **{_cell(status)}** | {figs} |"
    )
  lines += ["", "## Details", ""]
  for r in result["rows"]:
    if r["workdir"] is None:
      continue
    kinds = r.get("check_kinds") or {}
    checks = ", ".join(
        f"{k}{' [' + kinds[k] + ']' if k in kinds else ''}: "
        f"{'ok' if v else 'FAILED'}" for k, v in r["checks"].items())
    took = ("" if r["elapsed_s"] is None
            else f", {format_seconds(r['elapsed_s'])}")
    again = " (finished earlier, reused)" if r["skipped"] else ""
    lines.append(f"- {r['claim']}: `{r['workdir']}/`{took}{again}"
                 f"{'; ' + checks if checks else ''}")
    lines += [f"  ![{r['claim']} {Path(f).stem}]({f})" for f in r["figures"]]
  text = "\n".join(lines) + "\n"
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)
