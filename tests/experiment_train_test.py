"""Smoke test of the classifier demonstration (``experiments.train``)."""

import functools
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from experiments import train
from ngdjax.experiment import config as config_lib

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny():
  c = train.SPEC.default_config()
  c.widths, c.batch_size, c.eval_every = (8,), 16, 2
  c.adam_lrs, c.sgd_lrs = (1e-2,), (0.3,)
  c.ngd_lrs, c.kfac_lrs = (0.5,), (0.5,)  # x 2 dampings each
  c.curvature_steps, c.first_order_steps = 3, 4
  c.kfac_inverse_every = 2
  return c


def test_train_smoke_and_resume(tmp_path):
  config = _tiny()
  summary = train.SPEC.run(config, tmp_path)
  saved = json.loads((tmp_path / "summary.json").read_text())
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert saved["passed"] == all(saved["checks"].values())
  # The saved verdict is the pure verdict of the saved measurement.
  assert saved["checks"] == train.SPEC.verdict(saved["measured"])
  for key in ("test_accuracy", "seconds_to_97", "steps_to_97"):
    assert set(saved["measured"][key]) == {"ngd", "kfac", "adam", "sgd"}
    assert saved[key] == saved["measured"][key]  # the interface
  for acc in saved["measured"]["test_accuracy"].values():
    assert 0.0 <= acc <= 1.0
  assert len(summary["figures"]) == 4
  for f in summary["figures"]:
    assert (tmp_path / f).read_bytes()[:8] == PNG_MAGIC
  for u in saved["details"]["runs"]:
    steps = [rec for rec in records if rec.get("method") == u["method"]
             and rec.get("lr") == u["lr"] and "step" in rec
             and rec.get("damping") == u["damping"]]
    assert len(steps) == u["steps_run"] + 1
    assert np.all(np.diff([rec["seconds"] for rec in steps]) >= 0)
    assert sum("test_accuracy" in rec for rec in steps) >= 2
  # The criteria say what ran: the tiny config gives NGD and K-FAC grids.
  assert "(each the best of its lr x damping grid)" in saved["expectation"]
  again = train.SPEC.run(config, tmp_path)
  assert again["resumed_units"] == len(saved["details"]["runs"])
  assert again["measured"]["test_accuracy"] == saved["measured"][
      "test_accuracy"]


def test_criteria_text_names_the_adaptive_run_or_the_grid():
  config = train.SPEC.default_config()  # adaptive: one run each
  for method in train.CURVATURE:
    assert train._how_chosen(config, method).startswith(
        "one run with the adaptive learning rate")
  config.ngd_dampings = ("adaptive", 1.0)
  assert train._how_chosen(config, "ngd") == (
      "the best of its lr x damping grid")


def _append(logs, **values):
  logs.append(values)


def test_grid_points_share_one_compiled_step():
  # A grid point run on the first point's compiled step (learning rate and
  # damping put in the state) equals the same point built from scratch.
  config = _tiny()
  config.kfac_statistics_every = 2
  ds = train.load(config)
  model = train.models.mlp((8,), out_dim=10, w_std=1.4)
  params0 = model.init(train.jax.random.key(0), ds.x_train.shape[1])
  for method in train.CURVATURE:
    compiled, logs = {}, []
    log = functools.partial(_append, logs)

    train._train(config, model, params0, ds, 16, method, 0.5, 0.1, compiled,
                 log)
    first = compiled[method]
    reused = train._train(config, model, params0, ds, 16, method, 1.0, 1.0,
                          compiled, log)
    assert compiled[method] is first
    fresh = train._train(config, model, params0, ds, 16, method, 1.0, 1.0,
                         {}, log)
    for key in ("final_test_accuracy", "best_test_accuracy", "steps_run",
                "damping", "lr"):
      assert reused[key] == fresh[key]
    losses = [v["loss"] for v in logs if "loss" in v]
    n = config.curvature_steps
    np.testing.assert_allclose(losses[n:2 * n], losses[2 * n:], rtol=1e-12)
    assert not np.allclose(losses[:n], losses[n:2 * n])


def _write_idx(path, array):
  array = np.asarray(array, np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += b"".join(struct.pack(">I", s) for s in array.shape)
  path.write_bytes(header + array.tobytes())


def test_train_reads_mnist_idx_files(tmp_path):
  rng = np.random.default_rng(0)
  data_dir = tmp_path / "mnist"
  data_dir.mkdir()
  for prefix, n in (("train", 60), ("t10k", 30)):
    labels = np.arange(n) % 10
    images = rng.integers(0, 255, (n, 4, 4))
    _write_idx(data_dir / f"{prefix}-images-idx3-ubyte", images)
    _write_idx(data_dir / f"{prefix}-labels-idx1-ubyte", labels)
  config = _tiny()
  config.data_dir = str(data_dir)
  summary = train.SPEC.run(config, tmp_path / "run")
  assert "MNIST" in summary["measured_text"]
  assert "n=60" in summary["measured_text"]


def test_presets_match_schema():
  path = REPO / "configs" / "train.py"
  for spec in (str(path), f"{path}:small", f"{path}:digits",
               f"{path}:mnist"):
    config_lib.check_config(config_lib.load_config_file(spec),
                            train.SPEC.default_config())


def test_bad_config_fails_at_start(tmp_path):
  config = _tiny()
  config.adam_lrs = ()
  config.target_accuracy = 1.5
  with pytest.raises(ValueError, match=r"len\(config.adam_lrs\) must be "
                     r">= 1.*config.target_accuracy must be <= 1"):
    train.SPEC.run(config, tmp_path)
  assert not (tmp_path / "config.json").exists()


def _result(method, lr, damping=None, steps=None, final=0.9):
  return {"method": method, "lr": lr, "damping": damping,
          "steps_to_target": steps, "final_test_accuracy": final}


def test_extend_grid_grows_only_past_a_winning_edge():
  results = [
      # NGD: best (lr 1, damping 1) is the top of both axes.
      _result("ngd", 0.5, 0.1), _result("ngd", 0.5, 1.0, steps=150),
      _result("ngd", 1.0, 0.1), _result("ngd", 1.0, 1.0, steps=90),
      # K-FAC: best (lr 1, damping 0.1) interior on lr, bottom on damping.
      *(_result("kfac", lr, lam) for lr in (0.5, 2.0) for lam in (0.1, 1.0)),
      _result("kfac", 1.0, 0.1, steps=50), _result("kfac", 1.0, 1.0),
      # Adam: best at the bottom (no target reached: by final accuracy).
      _result("adam", 1e-3, final=0.95), _result("adam", 1e-2, final=0.9),
      # SGD: a single learning rate has no ratio to continue.
      _result("sgd", 0.3, steps=10),
  ]
  new = sorted(train.extend_grid(results), key=str)
  expected = [("adam", 1e-4, None), ("kfac", 1.0, 0.01), ("ngd", 1.0, 10.0),
              ("ngd", 2.0, 1.0)]
  assert [(m, d is None) for m, _, d in new] == [
      (m, d is None) for m, _, d in expected]
  np.testing.assert_allclose([(lr, d or 0) for _, lr, d in new],
                             [(lr, d or 0) for _, lr, d in expected])
  # Once the new points are run and lose, the grid stops growing there.
  results += [_result("ngd", 2.0, 1.0, steps=120),
              _result("ngd", 1.0, 10.0, steps=100)]
  assert not any(p[0] == "ngd" for p in train.extend_grid(results))
