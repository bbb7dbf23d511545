"""Smoke test of C2 (``experiments.general_loss``)."""

import json
from pathlib import Path

import pytest

from experiments import general_loss
from ngdjax.experiment import config as config_lib

SPEC = general_loss.SPEC

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny():
  c = general_loss.SPEC.default_config()
  c.n, c.d, c.widths, c.reps, c.num_steps = 6, 3, (4, 64), 1, 3
  c.eta_fractions = (0.5, 0.9)
  return c


def test_general_loss_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = SPEC.run(config, tmp_path)
  saved = json.loads((tmp_path / "summary.json").read_text())
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert json.loads((tmp_path / "config.json").read_text())["n"] == 6
  assert saved["claim"] == "C2" and isinstance(saved["passed"], bool)
  assert set(saved["checks"]) == {"rate_wide", "theorem"}
  assert saved["passed"] == all(saved["checks"].values())
  # The saved verdict is the pure verdict of the saved measurement.
  assert saved["checks"] == SPEC.verdict(saved["measured"], config)
  assert summary["figures"] == ["ratio_vs_width.png", "residuals.png"]
  for f in summary["figures"]:
    assert (tmp_path / f).read_bytes()[:8] == PNG_MAGIC
  m = saved["measured"]
  assert (m["mu"], m["L"]) == (1.0, 2.0)
  assert m["rate_factor"] == pytest.approx(4 / 3)
  runs = saved["details"]["runs"]
  assert sorted({u["eta"] for u in runs}) == pytest.approx([1 / 3, 0.6])
  for u in runs:
    assert u["bound"] == pytest.approx(1 - u["eta"] * 4 / 3)
    assert u["holds"] == (u["max_ratio"] <= u["bound"] * (1 + 1e-9))
  assert any("ratio" in rec for rec in records)
  again = SPEC.run(config, tmp_path)
  assert again["resumed_units"] == 4
  assert again["measured"] == saved["measured"]


def test_bad_eta_fraction_fails_at_start(tmp_path):
  config = _tiny()
  config.eta_fractions = (0.5, 1.2)
  with pytest.raises(ValueError, match="eta_fractions"):
    SPEC.run(config, tmp_path)


def test_presets_load_and_match_schema():
  path = Path(__file__).resolve().parents[1] / "configs" / "general_loss.py"
  for spec in (str(path), f"{path}:small"):
    config = config_lib.load_config_file(spec)
    config_lib.check_config(config, general_loss.SPEC.default_config())
  with pytest.raises(ValueError, match="unknown preset"):
    config_lib.load_config_file(f"{path}:huge")
