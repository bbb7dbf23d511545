"""Tests for ngdjax.experiment: run files, resume, config checks, experiments.

The experiment smoke tests call each library ``run`` with a tiny config, as
the entry points do with a real one, and check that every file parses.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from experiments import analysis, gram_limit, lambda0_vs_n, registry
from ngdjax import experiment
from ngdjax.experiment import config as config_lib
from ngdjax.experiment import metrics, plots, reproduce

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# Files: atomic summary, flushed metrics.
# --------------------------------------------------------------------------


def test_summary_is_written_atomically(tmp_path):
  metrics.write_summary(tmp_path, {"passed": True, "x": np.float64(1.5)})
  assert metrics.read_summary(tmp_path) == {"passed": True, "x": 1.5}
  # A write that fails half-way (an unserialisable value) leaves the old
  # file intact and no temporary file behind.
  with pytest.raises(TypeError, match="cannot write object"):
    metrics.write_summary(tmp_path, {"passed": False, "bad": object()})
  assert metrics.read_summary(tmp_path) == {"passed": True, "x": 1.5}
  assert sorted(os.listdir(tmp_path)) == ["summary.json"]


def test_atomic_write_uses_replace(tmp_path, monkeypatch):
  calls = []
  real = os.replace
  monkeypatch.setattr(os, "replace",
                      lambda a, b: calls.append((a, b)) or real(a, b))
  metrics.write_summary(tmp_path, {"a": 1})
  assert len(calls) == 1 and Path(calls[0][1]) == tmp_path / "summary.json"
  assert Path(calls[0][0]).parent == tmp_path  # same file system


def test_metrics_lines_are_flushed_per_step(tmp_path):
  writer = metrics.MetricsWriter(tmp_path)
  writer.write({"loss": 1.0}, step=0)
  # Readable by another reader before the writer is closed.
  assert metrics.read_metrics(tmp_path) == [{"step": 0, "loss": 1.0}]
  writer.write({"loss": np.float32(0.5), "ratio": float("nan"),
                "vec": jax.numpy.arange(2)}, step=1)
  records = metrics.read_metrics(tmp_path)
  assert records[1]["loss"] == 0.5 and records[1]["vec"] == [0, 1]
  assert np.isnan(plots.as_float(records[1]["ratio"]))
  writer.close()


def test_read_metrics_skips_truncated_last_line_only(tmp_path):
  path = tmp_path / metrics.METRICS_FILE
  path.write_text('{"step": 0}\n{"step": 1, "lo')  # killed mid-write
  assert metrics.read_metrics(tmp_path) == [{"step": 0}]
  path.write_text('{"step": 0}\n{"ste\n{"step": 2}\n')
  with pytest.raises(ValueError, match="line 2 is not valid JSON"):
    metrics.read_metrics(tmp_path)


# --------------------------------------------------------------------------
# Config and workdir checks, at start.
# --------------------------------------------------------------------------


def _defaults():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.width = 8
  c.eta = 0.5
  c.widths = (1, 2)
  c.name = "a"
  c.optim = ml_collections.ConfigDict({"damping": 1e-3})
  return c


def test_check_config_names_unknown_missing_and_mistyped_fields():
  config_lib.check_config(_defaults(), _defaults())
  # Built from a dict: a config file can hold any of these mistakes.
  bad = _defaults().to_dict()
  bad["widht"] = bad.pop("width")
  bad["eta"] = "fast"
  bad["optim"]["dampin"] = 1.0
  bad = ml_collections.ConfigDict(bad)
  with pytest.raises(ValueError) as e:
    config_lib.check_config(bad, _defaults())
  msg = str(e.value)
  assert "config.widht is not a field" in msg
  assert "did you mean config.width?" in msg
  assert "config.width is missing" in msg
  assert "config.eta must be a number" in msg
  assert "config.optim.dampin is not a field" in msg
  ok = _defaults()
  ok.eta = 1  # an int where a float is expected is fine
  config_lib.check_config(ok, _defaults())


def test_run_with_unknown_field_fails_before_writing(tmp_path):
  bad = gram_limit.SPEC.default_config()
  with bad.unlocked():
    bad.widht = 3
  with pytest.raises(ValueError, match=r"config\.widht is not a field"):
    gram_limit.SPEC.run(bad, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_unwritable_workdir_fails_at_start(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="is not a writable directory"):
    config_lib.check_workdir(blocker / "run")
  with pytest.raises(ValueError, match="is not a writable directory"):
    lambda0_vs_n.SPEC.run(lambda0_vs_n.SPEC.default_config(), blocker / "run")
  with pytest.raises(ValueError, match="workdir must be"):
    config_lib.check_workdir("")


def test_load_config_file_presets_and_presets_match_schema():
  for name, module in (("gram_limit", gram_limit),
                       ("lambda0_vs_n", lambda0_vs_n)):
    path = REPO / "configs" / f"{name}.py"
    for spec in (str(path), f"{path}:small"):
      config_lib.check_config(config_lib.load_config_file(spec),
                              module.SPEC.default_config())
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
      config_lib.load_config_file(f"{path}:huge")
  with pytest.raises(ValueError, match="does not exist"):
    config_lib.load_config_file("configs/nowhere.py")


def test_initialize_distributed_calls_jax_only_when_enabled(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda **kw: calls.append(kw))
  assert not config_lib.initialize_distributed(False)
  assert calls == []
  assert config_lib.initialize_distributed(True, num_processes=1)
  assert calls == [{"num_processes": 1}]


# --------------------------------------------------------------------------
# Resume, seeding, progress.
# --------------------------------------------------------------------------


def _tiny_run(workdir, fail_at=None):
  """Five units; unit ``fail_at`` raises half-way (after logging a step)."""
  config = ml_collections.ConfigDict({"seed": 3})
  computed = []
  with experiment.Run(workdir, config, config, name="tiny") as r:
    r.start_progress(5)

    def compute(i, log):
      log(step=0, partial=i)
      if i == fail_at:
        raise KeyboardInterrupt  # as if the job were killed
      computed.append(i)
      value = float(jax.random.uniform(r.key(f"unit={i}")))
      return {"i": i, "value": value}

    results = [r.unit(f"unit={i}", lambda log, i=i: compute(i, log))
               for i in range(5)]
  return computed, results


def test_interrupted_run_resumes_and_loses_no_finished_unit(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    _tiny_run(tmp_path, fail_at=3)
  assert sorted(experiment.UnitStore(tmp_path).finished()) == [
      "unit=0", "unit=1", "unit=2"]
  computed, results = _tiny_run(tmp_path)
  assert computed == [3, 4]  # finished units are skipped, not redone
  _, fresh = _tiny_run(tmp_path / "fresh")
  assert results == fresh  # same numbers as an uninterrupted run
  # The interrupted unit's partial metrics were dropped, not duplicated.
  partial = [r["unit"] for r in metrics.read_metrics(tmp_path)
             if "partial" in r]
  assert sorted(partial) == [f"unit={i}" for i in range(5)]


def test_run_refuses_a_workdir_of_another_config(tmp_path):
  config = ml_collections.ConfigDict({"seed": 0})
  with experiment.Run(tmp_path, config, config):
    pass
  other = ml_collections.ConfigDict({"seed": 1})
  with pytest.raises(ValueError, match=r"config\.seed: 0 -> 1"):
    experiment.Run(tmp_path, other, other)


def test_seed_key_is_deterministic_and_distinct():
  data = lambda k: jax.random.key_data(k).tolist()  # noqa: E731
  assert data(experiment.seed_key(0, "a", 1)) == data(
      experiment.seed_key(0, "a", 1))
  assert data(experiment.seed_key(0, "a", 1)) != data(
      experiment.seed_key(0, "a", 2))
  assert data(experiment.seed_key(0, "a")) != data(experiment.seed_key(1, "a"))
  assert experiment.unit_key(width=4, rep=0) == "width=4/rep=0"


def test_progress_eta_ignores_resumed_units():
  p = experiment.Progress(total=10, name="t", interval_s=0.0)
  p.skip(5)
  assert p.eta_s() is None
  p.update()
  assert p.done == 6 and p.eta_s() is not None and p.eta_s() >= 0


# --------------------------------------------------------------------------
# Experiments: smoke tests with tiny configs.
# --------------------------------------------------------------------------


def _check_files(workdir, figures):
  config = json.loads((workdir / "config.json").read_text())
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert lines and all(isinstance(json.loads(x), dict) for x in lines)
  summary = json.loads((workdir / "summary.json").read_text())
  for f in figures:
    assert (workdir / f).read_bytes()[:8] == PNG_MAGIC
  return config, summary


# Tiny configs, shared by the smoke tests and the reproduction test (same
# shapes, so the second run reuses the compiled code).
TINY = {
    "gram_limit": "c.n, c.d, c.widths, c.reps = 6, 3, (4, 16, 64), 2",
    "lambda0_vs_n": "c.d, c.ns, c.reps = 4, (8, 16, 32), 4",
}


def _tiny(module):
  c = module.SPEC.default_config()
  exec(TINY[module.SPEC.name], {"c": c})  # noqa: S102 - test fixture text
  return c


def test_gram_limit_smoke_and_resume(tmp_path):
  config = _tiny(gram_limit)
  summary = gram_limit.SPEC.run(config, tmp_path)
  saved_config, saved = _check_files(tmp_path, summary["figures"])
  assert saved_config["widths"] == [4, 16, 64]
  assert saved["claim"] == "C5" and isinstance(saved["passed"], bool)
  assert set(saved["checks"]) == {"exponent", "lemma6"}
  assert saved["passed"] == all(saved["checks"].values())
  assert saved["checks"] == gram_limit.SPEC.verdict(saved["measured"], config)
  assert -1.0 < saved["measured"]["exponent"] < 0.0
  assert summary["figures"] == ["gram_error.png", "lambda_min.png"]
  again = gram_limit.SPEC.run(config, tmp_path)
  assert again["resumed_units"] == 3
  assert again["measured"] == saved["measured"]


def test_threshold_width_with_repetitions():
  widths = [4, 4, 16, 16, 64, 64]
  assert analysis.threshold_width(widths, [0, 0, 1, 0, 1, 1]) == 64
  assert analysis.threshold_width(widths, [1, 0, 1, 1, 1, 1]) == 16
  assert analysis.threshold_width(widths, [1, 1, 1, 1, 1, 0]) is None


def test_lambda0_vs_n_smoke(tmp_path):
  config = _tiny(lambda0_vs_n)
  summary = lambda0_vs_n.SPEC.run(config, tmp_path)
  _, saved = _check_files(tmp_path, summary["figures"])
  assert saved["claim"] == "C8"
  assert saved["passed"] == all(saved["checks"].values())
  assert saved["checks"] == lambda0_vs_n.SPEC.verdict(saved["measured"])
  assert saved["measured"]["exponent"] < 0


def test_reproduce_report_with_tiny_configs_and_rerun(tmp_path):
  # Only C5 and C8 (tiny configs) are registered, so the test does not
  # depend on the other experiments.
  specs = (gram_limit.SPEC, lambda0_vs_n.SPEC)
  configs = tmp_path / "configs"
  configs.mkdir()
  for name, fields in TINY.items():
    (configs / f"{name}.py").write_text(
        f"from experiments import {name}\n"
        "def get_config(arg=None):\n"
        f"  c = {name}.SPEC.default_config()\n"
        f"  {fields}\n"
        "  return c\n")
  out = tmp_path / "out"
  result = reproduce.run(out, specs, configs)
  rows = {r["claim"]: r for r in result["rows"]}
  assert list(rows) == ["C5", "C8"]
  assert rows["C5"]["status"] in ("PASS", "FAIL")
  assert rows["C8"]["status"] in ("PASS", "FAIL")
  # The row's title is the spec's, the measured text the run's.
  assert rows["C5"]["title"] == gram_limit.SPEC.row
  summary = json.loads((out / "C5_gram_limit_small" / "summary.json")
                       .read_text())
  assert rows["C5"]["measured"] == summary["measured_text"]
  report = (out / "report.md").read_text()
  assert "C5_gram_limit_small/gram_error.png" in report
  # Each check is marked inside the hypotheses or an observation.
  assert "power_bound [theorem]" in report
  assert "lemma6 [observation]" in report
  counts = json.loads((out / "report.json").read_text())["counts"]
  assert sum(counts.values()) == 2
  again = reproduce.run(out, specs, configs, only="C5,C8")
  assert all(r["skipped"] for r in again["rows"])
  with pytest.raises(ValueError, match=r"unknown claims \['C13'\]"):
    reproduce.run(out, specs, configs, only="C13")


def test_every_registered_experiment_has_config_and_entry_point():
  claims = [s.claim for s in registry.SPECS]
  assert claims == [f"C{i}" for i in range(1, 13)] + ["D1"]
  for spec in registry.SPECS:
    assert (REPO / "configs" / f"{spec.name}.py").is_file(), spec.name
    assert (REPO / "experiments" / f"{spec.name}.py").is_file()
    # The config file's presets are the spec's.
    path = REPO / "configs" / f"{spec.name}.py"
    assert config_lib.load_config_file(f"{path}:small") == (
        spec.get_config("small"))


def test_entry_point_rejects_misspelled_override(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.gram_limit",
       "--config=configs/gram_limit.py:small", "--config.widht=3",
       f"--workdir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode != 0
  assert "widht" in proc.stderr
  assert not (tmp_path / "config.json").exists()


# --------------------------------------------------------------------------
# Faults on the command line and on resume.
# --------------------------------------------------------------------------


def test_missing_config_file_names_the_path(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.lambda0_vs_n",
       f"--config={tmp_path}/nope.py", f"--workdir={tmp_path}/w"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert proc.returncode != 0
  assert "--config could not be loaded" in proc.stderr
  assert f"{tmp_path}/nope.py" in proc.stderr
  assert "_ErrorConfig" not in proc.stderr
  assert not (tmp_path / "w").exists()


def test_config_load_error_is_reported_by_check_config():
  from ml_collections.config_flags import config_flags

  broken = config_flags._ErrorConfig(OSError("no file at /x/y.py"))
  with pytest.raises(ValueError, match="could not be loaded: no file at"):
    config_lib.check_config(broken, _defaults())


def test_invalid_config_value_leaves_no_config_json(tmp_path):
  # The experiment rejects the value inside the Run (as --config.ns=... with
  # too few sizes does); the corrected rerun must not be refused as "a run
  # of another config".
  bad = _tiny(lambda0_vs_n)
  bad.ns = (8,)
  with pytest.raises(ValueError, match="config.ns"):
    lambda0_vs_n.SPEC.run(bad, tmp_path)
  assert not (tmp_path / "config.json").exists()
  assert not (tmp_path / "metrics.jsonl").exists()
  summary = lambda0_vs_n.SPEC.run(_tiny(lambda0_vs_n), tmp_path)
  assert summary["experiment"] == lambda0_vs_n.SPEC.name


def test_a_failed_resume_keeps_the_files_of_finished_units(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    _tiny_run(tmp_path, fail_at=2)
  with pytest.raises(KeyboardInterrupt):
    _tiny_run(tmp_path, fail_at=2)  # fails again before any new unit
  assert (tmp_path / "config.json").exists()
  assert sorted(experiment.UnitStore(tmp_path).finished()) == [
      "unit=0", "unit=1"]


def _unit_lines(workdir):
  return [r for r in metrics.read_metrics(workdir) if "value" in r]


def test_truncated_result_line_is_recomputed_on_resume(tmp_path, caplog):
  _, fresh = _tiny_run(tmp_path)
  path = tmp_path / metrics.METRICS_FILE
  text = path.read_text()
  assert text.endswith("\n")
  # The last unit's result line loses its tail (e.g. a full disk).
  path.write_text(text[: len(text) - 10])
  assert len(_unit_lines(tmp_path)) == 4  # the bug: silently lost
  caplog.set_level("WARNING")
  computed, results = _tiny_run(tmp_path)
  assert computed == [4]  # that unit is redone, no other
  assert results == fresh
  assert sorted(r["unit"] for r in _unit_lines(tmp_path)) == [
      f"unit={i}" for i in range(5)]
  assert "truncated last line" in caplog.text
  assert "unit=4" in caplog.text
  # Every line parses again.
  for line in path.read_text().splitlines():
    json.loads(line)


def test_truncated_step_line_of_an_unfinished_unit_is_dropped(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    _tiny_run(tmp_path, fail_at=3)
  path = tmp_path / metrics.METRICS_FILE
  path.write_text(path.read_text() + '{"step": 0, "unit": "unit=3", "par')
  computed, _ = _tiny_run(tmp_path)
  assert computed == [3, 4]
  partial = sorted(r["unit"] for r in metrics.read_metrics(tmp_path)
                   if "partial" in r)
  assert partial == [f"unit={i}" for i in range(5)]


def test_truncated_unit_file_is_recomputed_and_named(tmp_path, caplog):
  _, fresh = _tiny_run(tmp_path)
  store = experiment.UnitStore(tmp_path)
  unit_file = store.path("unit=1")
  unit_file.write_text(unit_file.read_text()[:20])
  with pytest.raises(ValueError, match=f"unit file {unit_file} is corrupt"):
    store.load("unit=1")
  caplog.set_level("WARNING")
  computed, results = _tiny_run(tmp_path)
  assert computed == [1]
  assert results == fresh
  assert str(unit_file) in caplog.text
  assert unit_file.with_name(unit_file.name + ".corrupt").exists()
  assert sorted(r["unit"] for r in _unit_lines(tmp_path)) == [
      f"unit={i}" for i in range(5)]


def test_run_switches_the_prng_stream_only_inside_its_block(tmp_path):
  config = ml_collections.ConfigDict({"seed": 0})
  before = jax.config.jax_threefry_partitionable
  run = experiment.Run(tmp_path / "a", config, config)
  assert jax.config.jax_threefry_partitionable == before  # not entered
  run.close()
  with experiment.Run(tmp_path / "b", config, config):
    assert jax.config.jax_threefry_partitionable is False
  assert jax.config.jax_threefry_partitionable == before


def test_claim_modules_import_no_other_claim():
  """Shared analysis lives in analysis.py (or ngd_training.py for C1-C4),
  never imported from another claim's module."""
  import ast

  shared = {"analysis", "batching", "checkpoint", "common", "config",
            "metrics",
            "ngd_training",
            "plots", "progress", "runner", "timing", "verdicts"}
  for spec in registry.SPECS:
    path = REPO / "experiments" / f"{spec.name}.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module:
        if node.module in ("ngdjax.experiment", "experiments"):
          imported |= {a.name for a in node.names}
        elif node.module.startswith(("ngdjax.experiment.", "experiments.")):
          imported.add(node.module.rsplit(".", 1)[1])
    assert imported <= shared, (spec.name, imported - shared)


def test_experiment_layer_uses_the_public_api():
  """The experiments call ngdjax as a user would: no ``ngdjax._src``."""
  for path in sorted([*(REPO / "ngdjax" / "experiment").glob("*.py"),
                      *(REPO / "experiments").glob("*.py")]):
    assert "ngdjax._src" not in path.read_text(), path.name


@pytest.mark.skipif((os.cpu_count() or 1) < 2,
                    reason="one core: OpenBLAS starts one thread anyway")
def test_experiments_give_openblas_one_thread_unless_told():
  # As `python -m experiments.<name>` starts: the package first, then
  # numpy and scipy's LAPACK. threadpoolctl comes with scikit-learn.
  probe = ("import experiments, numpy, scipy.linalg, threadpoolctl; "
           "print(sorted({i['num_threads'] for i in "
           "threadpoolctl.threadpool_info() "
           "if i['internal_api'] == 'openblas'}))")
  root = Path(__file__).resolve().parent.parent
  env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
  out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[1]"
  env["OPENBLAS_NUM_THREADS"] = "2"  # the caller's choice is kept
  out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env,
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[2]"
