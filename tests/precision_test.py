"""The precision policy (ngdjax/_src/precision.py) under emulated rounding.

``rounding_emulation.emulate`` makes XLA on CPU round the operands of every
float32 dot and convolution that is not ``HIGHEST``, as TF32 GPUs and
bfloat16 TPUs do. Under it, every float32 result of the library with the
default ``precision`` must stay within 10x of its plain CPU float32 error
against float64; with ``precision="default"`` it must not (the emulation
works and the argument is honoured).
"""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from rounding_emulation import emulate

import ngdjax
from ngdjax._src import precision

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import precision_cases as pc  # noqa: E402

# Within this factor of the CPU float32 error (the acceptance bound).
FACTOR = 10.0
# The CPU float32 error of the direct computations must be small for the
# ratio to mean anything. Float32 CG is exempt: its own error grows with the
# condition number (2.5e-2 on the tiny MLP at damping 1e-3, on CPU).
CPU_FLOAT32_BOUND = 1e-3
BF16_SUBSET = ("gram", "ngd_cholesky", "kfac")


def small(name):
  if name == "two-layer":
    return pc.two_layer(n=24, d=4, width=32)
  if name == "mlp":
    return pc.mlp(n=24, d=4, widths=(16, 16))
  return pc.cnn(n=12, side=5, channels=2)


@pytest.fixture(scope="module", params=["two-layer", "mlp", "flax-cnn"])
def case_errors(request):
  """Per quantity: the float32 error on CPU, under TF32 and bfloat16
  emulation with the default policy, and (one quantity) with "default"."""
  case = small(request.param)
  names = [q for q in case.quantities if q != "ngd_mixed"]
  ref = pc.quantities(case, jnp.float64, "highest", names=names)
  out = {"cpu": pc.errors(case, None, ref, names=names)}
  with emulate("tf32"):
    out["tf32"] = pc.errors(case, None, ref, names=names)
  with emulate("bf16"):
    # A subset, to keep the suite fast: bfloat16 rounds the same dots.
    out["bf16"] = pc.errors(case, None, ref,
                            names=[q for q in names if q in BF16_SUBSET])
  with emulate("tf32"):
    out["tf32 mixed"] = pc.errors(case, None, ref, names=["ngd_mixed"])
    out["tf32 default"] = pc.errors(case, "default", ref, names=["gram"])
  out["ref_mixed"] = ref["ngd_cholesky"]
  return case, out


@pytest.mark.parametrize("mode", ["tf32", "bf16"])
def test_default_policy_matches_cpu_float32(case_errors, mode):
  case, errs = case_errors
  for q, got in errs[mode].items():
    cpu = errs["cpu"][q]
    assert q == "ngd_cg" or cpu < CPU_FLOAT32_BOUND, (case.name, q, cpu)
    assert got <= FACTOR * cpu, (case.name, q, got, cpu)


def test_mixed_matches_cpu_float32(case_errors):
  case, errs = case_errors
  got = errs["tf32 mixed"]["ngd_mixed"]
  assert got <= FACTOR * errs["cpu"]["ngd_cholesky"], (case.name, got)


def test_default_precision_rounds(case_errors):
  case, errs = case_errors
  assert errs["tf32 default"]["gram"] > 100 * errs["cpu"]["gram"], case.name


def _mlp_problem(n=16):
  model = ngdjax.mlp((16,), out_dim=1)
  params = model.init(jax.random.key(0), in_dim=3)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
  x = jax.random.normal(jax.random.key(1), (n, 3), jnp.float32)
  y = jax.random.normal(jax.random.key(2), (n, 1), jnp.float32)
  return model, params, x, y


def test_precision_argument_honoured_under_emulation():
  model, params, x, _ = _mlp_problem()

  def gram(precision=None):  # one compiled program, not op-by-op dispatch
    return jax.jit(lambda p, x: ngdjax.gram(model, p, x,
                                            precision=precision))(params, x)

  with emulate("tf32"):
    hi = gram("highest")
    lo = gram("default")
    fast = gram("fast")
    with jax.default_matmul_precision("highest"):
      # "default" follows the user's flag; "fast" overrides it.
      lo_flag = gram("default")
      fast_flag = gram("fast")
  cpu = gram()
  np.testing.assert_array_equal(np.asarray(hi), np.asarray(cpu))
  np.testing.assert_array_equal(np.asarray(lo_flag), np.asarray(cpu))
  assert np.abs(np.asarray(lo) - np.asarray(cpu)).max() > 1e-5
  assert np.abs(np.asarray(fast) - np.asarray(cpu)).max() > 1e-5
  assert np.abs(np.asarray(fast_flag) - np.asarray(cpu)).max() > 1e-5


def test_emulation_does_not_reuse_executables():
  model, params, x, _ = _mlp_problem()
  f = jax.jit(lambda p, x: ngdjax.gram(model, p, x, precision="default"))
  before = np.asarray(f(params, x))
  with emulate("tf32"):
    inside = np.asarray(f(params, x))
  after = np.asarray(f(params, x))
  assert np.abs(inside - before).max() > 1e-5
  np.testing.assert_array_equal(after, before)


def test_policy_covers_user_model_and_its_transpose():
  model, params, x, _ = _mlp_problem()

  def pullback_dots(prec):
    def f(p, x):
      w = jnp.ones((x.shape[0], 1), x.dtype)
      return ngdjax.vjp(model, p, x, w, precision=prec)
    jaxpr = str(jax.make_jaxpr(f)(params, x))
    return jaxpr.count("dot_general"), jaxpr.count("HIGHEST")

  dots, highest = pullback_dots(None)
  assert dots > 0 and highest >= dots
  _, highest_default = pullback_dots("default")
  assert highest_default == 0


def test_nested_calls_inherit_and_argument_checked():
  with precision.scope("fast"):
    assert precision.resolve(None) == "fast"
    with precision.scope(None) as inner:
      assert inner == "fast"
  assert precision.resolve(None) == "highest"
  with pytest.raises(ValueError, match="precision"):
    ngdjax.gram(lambda p, x: x @ p, jnp.ones((2, 1)), jnp.ones((3, 2)),
                precision="tf32")
  with pytest.raises(ValueError, match="precision"):
    ngdjax.kfac(ngdjax.mlp((4,)), 1.0, precision="mixed")


def test_half_precision_curvature_in_float32():
  model, params, x, y = _mlp_problem()
  p16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
  x16 = x.astype(jnp.bfloat16)
  g = ngdjax.gram(model, p16, x16)
  assert g.dtype == jnp.float32
  ref = ngdjax.gram(model, jax.tree_util.tree_map(
      lambda a: a.astype(jnp.float32), p16), x16.astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(g), np.asarray(ref))
  opt = ngdjax.ngd(model, 1.0, damping=1e-3)
  state = opt.init(p16)
  new, state2, info = jax.jit(opt.step)(p16, state, x16,
                                        y.astype(jnp.bfloat16))
  assert jax.tree_util.tree_map(lambda a: a.dtype, new) == \
      jax.tree_util.tree_map(lambda a: a.dtype, p16)
  assert jax.tree_util.tree_structure(state2) == \
      jax.tree_util.tree_structure(state)
  assert int(info["cholesky_failed"]) == 0


def test_mixed_reports_products_and_falls_back():
  model, params, x, y = _mlp_problem(24)
  with emulate("bf16"):
    opt = ngdjax.ngd(model, 1.0, damping=1e-3, precision="mixed")
    _, _, info = jax.jit(opt.step)(params, opt.init(params), x, y)
    assert 1 <= int(info["mixed_products"]) <= 8
    assert int(info["mixed_fallback"]) == 0
    # Zero damping on duplicated rows: G is singular, the fast factor
    # cannot precondition it; the step falls back to the HIGHEST Gram.
    xd = jnp.concatenate([x, x])
    yd = jnp.concatenate([y, -y])
    opt0 = ngdjax.ngd(model, 1.0, damping=0.0, precision="mixed")
    _, _, info0 = jax.jit(opt0.step)(params, opt0.init(params), xd, yd)
  assert int(info0["mixed_fallback"]) == 1
  assert int(info0["mixed_products"]) >= 1


@pytest.mark.slow  # ~30 s; the command itself is run on each device
def test_accelerator_quick_mode(tmp_path):
  root = pathlib.Path(__file__).resolve().parents[1]
  out = tmp_path / "table.md"
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.accelerator", "--quick",
       f"--output={out}"],
      cwd=root, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": os.pathsep.join(
          [str(root), os.environ.get("PYTHONPATH", "")])})
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = out.read_text()
  assert "| gram" in text and "FAIL" not in text


def test_two_batch_adaptive_step_under_emulation():
  # The adaptive step with model_batches=2 (its extra linearisation and
  # forward pass on the stored batch run inside the step's policy): three
  # float32 steps under TF32 emulation stay within FACTOR of CPU float32's
  # error against float64; with precision="default" they do not.
  model, params, x, y = _mlp_problem(n=24)

  def update(dtype, precision=None):
    p0 = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    xs, ys = x.astype(dtype), y.astype(dtype)
    opt = ngdjax.ngd(model, model_batches=2, example_inputs=xs[:8],
                     precision=precision)
    step = jax.jit(opt.step)
    p, state = p0, opt.init(p0)
    for k in range(3):
      p, state, info = step(p, state, xs[8 * k:8 * k + 8],
                            ys[8 * k:8 * k + 8])
      assert int(info["step_rejected"]) == 0
    flat = ravel_pytree
    return np.asarray(flat(p)[0] - flat(p0)[0], np.float64)

  ref = update(jnp.float64)
  err = lambda u: np.linalg.norm(u - ref) / np.linalg.norm(ref)  # noqa
  cpu = err(update(jnp.float32))
  with emulate("tf32"):
    tf32 = err(update(jnp.float32))
    rounded = err(update(jnp.float32, "default"))
  assert cpu < CPU_FLOAT32_BOUND, cpu
  assert tf32 <= FACTOR * cpu, (tf32, cpu)
  assert rounded > FACTOR * cpu, (rounded, cpu)
