"""Smoke test of C7 (``experiments.forster_convergence``)."""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import forster_convergence
from ngdjax.experiment import config as config_lib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny():
  c = forster_convergence.SPEC.default_config()
  c.n, c.d, c.repeats = 40, 4, 1
  return c


def test_forster_convergence_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = forster_convergence.SPEC.run(config, tmp_path)
  saved = json.loads((tmp_path / "summary.json").read_text())
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert json.loads((tmp_path / "config.json").read_text())["n"] == 40
  assert saved["claim"] == "C7" and isinstance(saved["passed"], bool)
  assert set(saved["checks"]) == {"both_converge", "newton_fewer_iterations"}
  assert saved["passed"] == all(saved["checks"].values())
  # The saved verdict is the pure verdict of the saved measurement.
  assert saved["checks"] == forster_convergence.SPEC.verdict(saved["measured"])
  assert summary["figures"] == ["error_vs_iteration.png"]
  assert (tmp_path / "error_vs_iteration.png").read_bytes()[:8] == PNG_MAGIC
  for kind in forster_convergence.KINDS:
    for method in forster_convergence.METHODS:
      errors = [rec["error"] for rec in records
                if rec.get("kind") == kind and rec.get("method") == method
                and "error" in rec]
      iters = saved["measured"][f"{kind}/{method}/iterations"]
      assert len(errors) == iters + 1
      assert saved["measured"][f"{kind}/{method}/time_s"] > 0
  again = forster_convergence.SPEC.run(config, tmp_path)
  assert again["resumed_units"] == len(forster_convergence.KINDS)
  assert again["measured"]["gaussian/newton/iterations"] == (
      saved["measured"]["gaussian/newton/iterations"])


def test_make_data_kinds():
  rng = np.random.default_rng(0)
  x = forster_convergence.make_data("near_critical", 100, 10, rng)
  # 0.96 * 2 n / d = 19 rows in a 2-dimensional subspace.
  assert np.linalg.matrix_rank(x[:19]) == 2
  assert np.linalg.matrix_rank(x) == 10
  x = forster_convergence.make_data("anisotropic", 100, 5, rng,
                                    anisotropy=1e4)
  scales = x.std(axis=0)
  assert 1e3 < scales[-1] / scales[0] < 1e5
  with pytest.raises(ValueError, match="unknown data kind"):
    forster_convergence.make_data("cubic", 10, 2, rng)


def test_unknown_kind_fails_at_start(tmp_path):
  config = _tiny()
  config.kinds = ("gaussian", "cubic")
  with pytest.raises(ValueError, match="config.kinds"):
    forster_convergence.SPEC.run(config, tmp_path)


def test_presets_load_and_match_schema():
  path = (Path(__file__).resolve().parents[1] / "configs"
          / "forster_convergence.py")
  for spec in (str(path), f"{path}:small"):
    config = config_lib.load_config_file(spec)
    config_lib.check_config(config, forster_convergence.SPEC.default_config())
  with pytest.raises(ValueError, match="unknown preset"):
    config_lib.load_config_file(f"{path}:huge")
