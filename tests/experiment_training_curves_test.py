"""Smoke test of C12 (``experiments.training_curves``)."""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import training_curves
from ngdjax.experiment import config as config_lib

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny():
  c = training_curves.SPEC.default_config()
  c.n_train, c.pca_dim, c.widths = 24, 6, (32,)
  c.gd_scales, c.adam_lrs = (1.0,), (1e-2,)
  c.curvature_steps, c.first_order_steps = 3, 5
  return c


def test_training_curves_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = training_curves.SPEC.run(config, tmp_path)
  saved = json.loads((tmp_path / "summary.json").read_text())
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert json.loads((tmp_path / "config.json").read_text())["n_train"] == 24
  assert saved["claim"] == "C12" and isinstance(saved["passed"], bool)
  assert set(saved["checks"]) == {"ngd_fast", "kfac_forster_fast"}
  assert saved["passed"] == all(saved["checks"].values())
  # The saved verdict is the pure verdict of the saved measurement.
  assert saved["checks"] == training_curves.SPEC.verdict(saved["measured"],
                                                         config)
  assert summary["figures"] == ["loss_vs_step_m32.png", "loss_vs_time_m32.png"]
  for f in summary["figures"]:
    assert (tmp_path / f).read_bytes()[:8] == PNG_MAGIC
  runs = saved["details"]["runs"]
  assert {u["method"] for u in runs} == set(training_curves.METHODS)
  for u in runs:
    steps = [rec for rec in records if rec.get("method") == u["method"]
             and "loss_rel" in rec]
    assert len(steps) == u["steps_run"] + 1
    times = [rec["seconds"] for rec in steps]
    assert np.all(np.diff(times) >= 0)  # cumulative wall-clock
  setup = saved["measured"]["setup"]
  assert setup["d"] == 6 and setup["forster_error"] < 1e-8
  again = training_curves.SPEC.run(config, tmp_path)
  assert again["resumed_units"] == len(runs) + 1  # and the setup unit
  assert again["measured"] == saved["measured"]


def test_prepare_inputs_and_steps_to():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 5))
  xp = training_curves.prepare_inputs(x, 3)
  assert xp.shape == (10, 3)
  np.testing.assert_allclose(np.linalg.norm(xp, axis=1), 1.0)
  # Inner products are those of the rows projected on the top 3 directions.
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  proj = x @ vt[:3].T
  proj /= np.linalg.norm(proj, axis=1, keepdims=True)
  np.testing.assert_allclose(xp @ xp.T, proj @ proj.T, atol=1e-12)
  assert training_curves.steps_to([1.0, 0.1, 1e-5, 1e-6], 1e-4) == 2
  assert training_curves.steps_to([1.0, 0.1], 1e-4) is None


def test_narrow_width_fails_at_start(tmp_path):
  config = _tiny()
  config.widths = (8,)
  with pytest.raises(ValueError, match="config.widths"):
    training_curves.SPEC.run(config, tmp_path)


def test_presets_match_schema():
  path = REPO / "configs" / "training_curves.py"
  for spec in (str(path), f"{path}:small"):
    config_lib.check_config(config_lib.load_config_file(spec),
                            training_curves.SPEC.default_config())
