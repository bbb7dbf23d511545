"""The one experiment runner: a spec per claim, a resumable run per workdir.

Each claim is one ``Experiment`` spec (data, no control flow): its name,
claim id and titles, its config file's ``get_config`` (the full run is the
schema; presets such as ``small`` change its values), range ``rules``, the
``measure`` function that runs the units and returns an ``Outcome``
(measured figures, the report's text, the figures drawn), and its
``checks`` as data (``verdicts.Check``)::

  SPEC = Experiment(
      name="gram_limit", claim="C5", title="G(0) -> G_inf ...",
      row="G(0) -> G_inf with width (Lemma 6)",
      get_config=configs.gram_limit.get_config,
      measure=measure, checks=CHECKS,
      rules=(Rule("len(widths)", ">=", 3, "for a fit"),))

``Experiment.run(config, workdir)`` is the same for every claim: it checks
the config (fields against the schema, then the rules) and the workdir,
calls ``measure(run, config)`` inside a ``Run``, evaluates the checks on
the measured figures and writes ``summary.json`` with the verdict, the
criteria text and the check kinds. ``experiments.registry`` lists
the specs; the reproduction report and every entry point read it.

``Run``: one experiment in one workdir, checked at start and resumable.
Inside ``measure``::

  units = [...]
  r.start_progress(len(units))
  results = [r.unit(unit_key(u), lambda log, u=u: one(u, r.key(u)))
             for u in units]

``Run`` refuses to resume a workdir that holds a run with another config,
writes ``config.json``, and gives each unit a key derived from the
config's seed and the unit's name (not from the order of execution), so an
interrupted and resumed run reproduces an uninterrupted one exactly.

Inside ``with Run(...)`` (and only there: the setting is thread-local and
restored when the block exits), JAX draws random numbers with the classic
(non-partitionable) threefry stream, ``jax.threefry_partitionable(False)``:
on CPU its compilation for each new array shape is about 7x cheaper (0.4 s
instead of 3 s of CPU time per shape, measured with jax 0.10), which
dominates experiments that sweep widths or sample sizes. Experiments run
single-device, where partitionability buys nothing. Code called from
``measure`` sees that stream; nothing else in the process does.

Faults on resume:

* A run that fails before finishing any unit (an invalid config value
  rejected by the experiment, a typo caught in the first second) leaves no
  ``config.json`` (nor a ``metrics.jsonl`` it created) behind, so the
  corrected rerun in the same workdir is not refused as "a run of another
  config".
* ``metrics.jsonl`` whose last line is truncated: the partial line is dropped
  with a warning. Every finished unit's result line is then looked up; a
  unit whose line is missing (the truncated line was its result, or the
  file lost lines) is recomputed, with a warning, so that the file again
  holds every unit's per-step metrics and result.
* A corrupt unit file: set aside and its unit recomputed
  (``checkpoint.UnitStore.finished``).
"""

from __future__ import annotations

import dataclasses
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from absl import logging

from ngdjax.experiment import checkpoint, metrics, verdicts
from ngdjax.experiment import config as config_lib
from ngdjax.experiment.progress import Progress

Log = Callable[..., None]


def seed_key(seed: int, *path: Any) -> jax.Array:
  """A JAX key for ``path`` under ``seed``: ``fold_in`` of each element.

  Elements are folded in as CRC32 of their ``str``, which is stable across
  processes (Python's ``hash`` of a string is salted per process).

  Example:

    >>> k1 = seed_key(0, "width=64", "rep=1")
    >>> bool((jax.random.key_data(k1) ==
    ...       jax.random.key_data(seed_key(0, "width=64", "rep=1"))).all())
    True
  """
  key = jax.random.key(int(seed))
  for item in path:
    key = jax.random.fold_in(key, zlib.crc32(str(item).encode()))
  return key


def unit_key(**fields: Any) -> str:
  """``unit_key(width=64, rep=0) == "width=64/rep=0"``."""
  return "/".join(f"{k}={v}" for k, v in fields.items())


def _differences(old: Any, new: Any, prefix: str = "config") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      out += _differences(old.get(k), new.get(k), f"{prefix}.{k}")
    return out
  return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


class Run:
  """A run directory with config, metrics, finished units and summary.

  Args:
    workdir: the run directory (created; must be writable).
    config: the run's ``ConfigDict``; must have a ``seed`` field.
    defaults: the experiment's default config (its schema), or ``None`` to
      skip the field check.
    name: the experiment's name (logs, summary).
    claim: the claim id it reproduces (``"C5"``), stored in the summary.

  Raises:
    ValueError: unknown, missing or mistyped config fields; an unwritable
      workdir; a workdir holding a run with a different config.
  """

  def __init__(self, workdir: str | os.PathLike, config: Any,
               defaults: Any = None, name: str = "run",
               claim: str | None = None):
    if defaults is not None:
      config_lib.check_config(config, defaults)
    self.workdir = config_lib.check_workdir(workdir)
    self.config = config
    self.name = name
    self.claim = claim
    self._start = time.monotonic()
    config_json = metrics.to_jsonable(config)
    old_path = self.workdir / metrics.CONFIG_FILE
    if old_path.exists():
      changed = _differences(metrics.read_json(old_path), config_json)
      if changed:
        raise ValueError(
            f"workdir {str(self.workdir)!r} holds a run of another config "
            f"({'; '.join(changed[:5])}); use a new workdir, or remove this "
            "one to start over"
        )
    # Files this run creates; removed again if it fails before any unit.
    metrics_path = self.workdir / metrics.METRICS_FILE
    self._created = [p for p in (old_path, metrics_path) if not p.exists()]
    metrics.write_config(self.workdir, config_json)
    self.units = checkpoint.UnitStore(self.workdir)
    self.resumed_units = self._verified_units()
    self.metrics = metrics.MetricsWriter(self.workdir,
                                         keep_units=self.resumed_units)
    self._finished_here = 0
    self.progress: Progress | None = None
    self._rng_state = None

  def _verified_units(self) -> list[str]:
    """Finished units whose result line ``metrics.jsonl`` still holds.

    See the module docstring: a truncated last line is dropped (the
    ``MetricsWriter`` rewrite) and units without a result line are redone.
    """
    finished = self.units.finished()
    records, truncated = metrics.read_metrics_checked(self.workdir)
    if truncated is not None:
      logging.warning(
          "%s: dropping a truncated last line (%d characters: %r...), "
          "written when the run was interrupted",
          self.workdir / metrics.METRICS_FILE, len(truncated),
          truncated[:60])
    results: dict[str, list[dict]] = {}
    for record in records:
      if "unit" in record:
        rest = {k: v for k, v in record.items() if k != "unit"}
        results.setdefault(record["unit"], []).append(rest)
    kept = []
    for key in finished:
      try:
        result = self.units.load(key)
      except ValueError as e:
        logging.warning("%s; the unit will be recomputed", e)
        self.units.discard(key)
        continue
      if result in results.get(key, []):
        kept.append(key)
      else:
        logging.warning(
            "unit %r is finished but its result line is missing from %s "
            "(truncated?); recomputing it", key,
            self.workdir / metrics.METRICS_FILE)
        self.units.discard(key)
    return kept

  # -- randomness ----------------------------------------------------------

  def key(self, *path: Any) -> jax.Array:
    """``seed_key(config.seed, *path)``."""
    return seed_key(self.config.seed, *path)

  # -- units of work -------------------------------------------------------

  def start_progress(self, total: int, interval_s: float = 5.0,
                     work: float | None = None) -> Progress:
    """Starts ETA logging for ``total`` units (of ``work`` total work)."""
    self.progress = Progress(total, self.name, interval_s, work)
    return self.progress

  def unit(self, key: str, compute: Callable[[Log], Mapping[str, Any]],
           work: float | None = None) -> dict[str, Any]:
    """The result of unit ``key``: reloaded if finished, else computed.

    ``compute(log)`` returns a dict of JSON-able results; it may call
    ``log(step=..., **metrics)`` for per-step metrics, which go to
    ``metrics.jsonl`` tagged with the unit. The result itself is also
    logged as one line (tagged ``unit``), then saved, then counted
    (``work``: this unit's share of the progress's total work).
    """
    if self.units.is_done(key):
      if self.progress is not None:
        self.progress.skip(work=work)
      return self.units.load(key)

    def log(step: int | None = None, **values: Any) -> None:
      self.metrics.write(values, step=step, unit=key)

    result = metrics.to_jsonable(dict(compute(log)))
    self.metrics.write(result, unit=key)
    self.units.save(key, result)
    self._finished_here += 1
    if self.progress is not None:
      self.progress.update(work=work, unit=key)
    return result

  # -- results --------------------------------------------------------------

  def records(self) -> list[dict[str, Any]]:
    """All lines of ``metrics.jsonl`` written so far."""
    return metrics.read_metrics(self.workdir)

  def finish(self, *, passed: bool, measured: Mapping[str, Any],
             measured_text: str, expectation: str,
             figures: Sequence[str] = (), title: str = "",
             checks: Mapping[str, bool] | None = None,
             details: Mapping[str, Any] | None = None,
             headline: Sequence[str] = ()) -> dict[str, Any]:
    """Writes ``summary.json`` (atomically) and returns it.

    Args:
      passed: whether the claim reproduced, computed from the measurements
        by the criterion stated in ``expectation``.
      measured: the measured figures (numbers).
      measured_text: one line for the report's "measured" column.
      expectation: the bound or expectation and the pass criterion.
      figures: PNG file names relative to the workdir.
      title: the claim in words.
      checks: the individual criteria that make up ``passed``.
      details: anything else worth keeping (per-unit tables, notes).
      headline: keys of ``measured`` also written at the top level (an
        interface other tools read, e.g. D1's ``test_accuracy``).
    """
    summary = {
        "claim": self.claim,
        "experiment": self.name,
        "title": title,
        "passed": bool(passed),
        "checks": {k: bool(v) for k, v in (checks or {}).items()},
        "measured": dict(measured),
        "measured_text": measured_text,
        "expectation": expectation,
        "figures": list(figures),
        "details": dict(details or {}),
        "resumed_units": len(self.resumed_units),
        "environment": {"jax": jax.__version__,
                        "backend": jax.default_backend(),
                        "float64": bool(jax.config.jax_enable_x64)},
        "elapsed_s": time.monotonic() - self._start,
    }
    for key in headline:
      if key in summary:
        raise ValueError(f"headline key {key!r} clashes with summary.json's "
                         "own fields")
      summary[key] = measured[key]
    metrics.write_summary(self.workdir, summary)
    return metrics.to_jsonable(summary)

  def close(self) -> None:
    self.metrics.close()
    if self._rng_state is not None:
      self._rng_state.__exit__(None, None, None)
      self._rng_state = None

  def __enter__(self) -> Run:
    # Scoped to the ``with`` block (see the module docstring): a ``Run``
    # used without ``with`` leaves the PRNG stream alone.
    self._rng_state = jax.threefry_partitionable(False)
    self._rng_state.__enter__()
    return self

  def __exit__(self, exc_type, *exc) -> None:
    self.close()
    if exc_type is not None and not self._finished_here and not (
        self.resumed_units):
      # Failed before any work (e.g. a config value the experiment
      # rejects): leave the workdir as it was, so that the corrected rerun
      # is not refused as a run of another config.
      for path in self._created:
        path.unlink(missing_ok=True)

  def path(self, name: str) -> Path:
    return self.workdir / name


# --------------------------------------------------------------------------
# The spec of one claim and the runner every claim shares.
# --------------------------------------------------------------------------

CRITERIA = "{criteria}"


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What an experiment's ``measure`` returns.

  Attributes:
    measured: the figures the checks judge (``summary["measured"]``).
    text: one line for the report's "measured" column.
    expectation: the report's "expectation" column; ``{criteria}`` in it is
      replaced by the checks' criteria (``verdicts.criteria_text``).
    figures: PNG file names relative to the workdir.
    details: anything else worth keeping (per-unit tables, notes).
  """

  measured: Mapping[str, Any]
  text: str
  expectation: str = CRITERIA
  figures: Sequence[str] = ()
  details: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One claim of the paper as data (see the module docstring).

  Attributes:
    name: the module's name in ``experiments/`` and ``configs/``.
    claim: ``"C1"`` .. ``"C12"``, or ``"D1"`` for a demonstration.
    title: the claim with its bounds (``summary["title"]``).
    row: the claim's short name in the report's first column.
    get_config: ``preset -> ConfigDict``, the ``get_config`` of
      ``configs/<name>.py``; its default (``get_config()``, the full run)
      is the schema every run's config is checked against.
    measure: ``(run, config) -> Outcome``.
    checks: the ``verdicts.Check`` s, or ``config -> checks`` when they
      depend on the config.
    rules: ``config.Rule`` ranges, checked before any work.
    validate: ``config -> None`` for conditions rules cannot state; raises
      ``ValueError`` naming the field.
    headline: keys of ``Outcome.measured`` that ``summary.json`` also holds
      at its top level (``Run.finish``).
  """

  name: str
  claim: str
  title: str
  row: str
  get_config: Callable[..., Any]
  measure: Callable[[Run, Any], Outcome]
  checks: Sequence[verdicts.Check] | Callable[[Any], Sequence[
      verdicts.Check]] = ()
  rules: Sequence[config_lib.Rule] = ()
  validate: Callable[[Any], None] | None = None
  headline: Sequence[str] = ()

  def default_config(self) -> Any:
    """The full run's config, ``get_config()``: the schema."""
    return self.get_config()

  def check_list(self, config: Any = None) -> tuple[verdicts.Check, ...]:
    """The checks (for the default config when ``config`` is ``None``)."""
    if callable(self.checks):
      return tuple(self.checks(self.default_config() if config is None
                               else config))
    return tuple(self.checks)

  def verdict(self, measured: Mapping[str, Any],
              config: Any = None) -> dict[str, bool]:
    """The checks on a measured dict (pure: no experiment is run)."""
    return verdicts.evaluate(self.check_list(config), measured)

  def check(self, config: Any) -> None:
    """Schema, rules and ``validate``; ``ValueError`` naming the field."""
    config_lib.check_config(config, self.default_config())
    config_lib.check_rules(config, self.rules)
    if self.validate is not None:
      self.validate(config)

  def run(self, config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs the claim in ``workdir`` and returns ``summary.json``'s dict."""
    self.check(config)
    with Run(workdir, config, None, name=self.name, claim=self.claim) as r:
      out = self.measure(r, config)
      check_list = self.check_list(config)
      passed = verdicts.evaluate(check_list, out.measured)
      return r.finish(
          passed=all(passed.values()), checks=passed,
          measured=out.measured, measured_text=out.text,
          expectation=out.expectation.replace(
              CRITERIA, verdicts.criteria_text(check_list)),
          figures=out.figures, title=self.title,
          details={**out.details,
                   "check_kinds": verdicts.kinds(check_list)},
          headline=self.headline)
