"""Smoke test of C6 (``experiments.kfac_forster``)."""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import kfac_forster
from ngdjax.experiment import config as config_lib

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["rate_vs_cond.png", "residuals_theorem_step.png",
           "forster_one_step.png"]


def _tiny():
  c = kfac_forster.SPEC.default_config()
  c.n, c.d, c.width, c.steps = 12, 3, 64, 3
  c.conds = (1.0, 10.0, 100.0)
  return c


def test_kfac_forster_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = kfac_forster.SPEC.run(config, tmp_path)
  saved = json.loads((tmp_path / "summary.json").read_text())
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert json.loads((tmp_path / "config.json").read_text())["n"] == 12
  assert saved["claim"] == "C6" and isinstance(saved["passed"], bool)
  assert set(saved["checks"]) == {"theorem_bound", "bound_all_conds",
                                  "degrades", "leverage_prediction",
                                  "forster_one_step", "equals_ngd"}
  # Theorem 4's hypotheses are measured per cond.
  for u in saved["details"]["per_cond"]:
    h = u["hypotheses"]
    assert h["lambda_S"] > -1e-12 and isinstance(h["inside"], bool)
  assert saved["passed"] == all(saved["checks"].values())
  # The saved verdict is the pure verdict of the saved measurement.
  assert saved["checks"] == kfac_forster.SPEC.verdict(saved["measured"], config)
  assert summary["figures"] == FIGURES
  for f in FIGURES:
    assert (tmp_path / f).read_bytes()[:8] == PNG_MAGIC
  steps = [rec for rec in records if rec.get("sweep") == "theorem"]
  assert len(steps) == len(config.conds) * (config.steps + 1)
  m = saved["measured"]
  # The constructed inputs have the prescribed condition numbers.
  per_cond = saved["details"]["per_cond"]
  np.testing.assert_allclose([u["cond_achieved"] for u in per_cond],
                             config.conds, rtol=1e-5)
  # K-FAC on Forster inputs at eta = 1/d equals NGD at eta = 1 to first
  # order, whatever the width (an exact identity: docs/math.md, "K-FAC"
  # and "The Forster transform").
  assert m["first_order_gap_max"] < 1e-8
  again = kfac_forster.SPEC.run(config, tmp_path)
  assert again["resumed_units"] == len(config.conds)
  assert again["measured"] == saved["measured"]


def test_leverage_scores_and_conditioning():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(20, 4))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  h = kfac_forster.leverage_scores(x)
  np.testing.assert_allclose(h, np.diag(x @ np.linalg.pinv(x)), atol=1e-12)
  assert np.isclose(h.sum(), 4.0)
  xk = kfac_forster.conditioned_inputs(x, 50.0 * kfac_forster.gram_cond(x))
  np.testing.assert_allclose(np.linalg.norm(xk, axis=1), 1.0)
  assert np.isclose(kfac_forster.gram_cond(xk),
                    50.0 * kfac_forster.gram_cond(x), rtol=1e-5)


def test_narrow_width_fails_at_start(tmp_path):
  config = _tiny()
  config.width = 8
  with pytest.raises(ValueError, match="config.width"):
    kfac_forster.SPEC.run(config, tmp_path)


def test_presets_match_schema():
  path = REPO / "configs" / "kfac_forster.py"
  for spec in (str(path), f"{path}:small"):
    config_lib.check_config(config_lib.load_config_file(spec),
                            kfac_forster.SPEC.default_config())
