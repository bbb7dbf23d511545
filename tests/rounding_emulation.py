"""Accelerator matmul rounding, emulated on CPU (tests only).

XLA on CPU multiplies float32 matrices exactly whatever their ``precision``.
GPUs (TF32, 10 mantissa bits) and TPUs (one bfloat16 pass, 7 mantissa bits)
round the operands of every float32 ``dot_general`` and
``conv_general_dilated`` whose precision is not ``HIGHEST``. ``emulate``
registers a CPU lowering for both primitives that applies
``reduce_precision`` (8 exponent bits, ``mantissa_bits`` mantissa bits) to
each such float32 operand and then calls the original lowering, and
restores the original on exit.

JAX caches lowered and compiled executables by jaxpr, not by lowering rule,
so ``emulate`` clears every cache on entry and on exit: nothing compiled
outside is reused inside, and nothing compiled inside leaks out. Functions
jitted outside must be traced again inside (they are, after the clear).

Never imported by the library.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
from jax._src.interpreters import mlir
from jax._src.lax import convolution as _convolution
from jax._src.lax import lax as _lax
from jax._src.lib.mlir.dialects import hlo

TF32_MANTISSA_BITS = 10
BF16_MANTISSA_BITS = 7
MODES = {"tf32": TF32_MANTISSA_BITS, "bf16": BF16_MANTISSA_BITS}

_EXACT_PRESETS = ("F32_F32_F32", "F64_F64_F64")


def _rounded_operands(precision) -> tuple[bool, bool]:
  """Which of ``(lhs, rhs)`` a chip rounds, from a canonical precision."""
  if precision is None:
    return True, True
  if isinstance(precision, (_lax.DotAlgorithmPreset, _lax.DotAlgorithm)):
    exact = getattr(precision, "name", "") in _EXACT_PRESETS
    return not exact, not exact
  highest = _lax.Precision.HIGHEST
  return precision[0] != highest, precision[1] != highest


def _round(operand, aval, mantissa_bits: int):
  if aval.dtype != np.float32:
    return operand
  return hlo.reduce_precision(operand, mlir.i32_attr(8),
                              mlir.i32_attr(mantissa_bits))


def _wrap(original, mantissa_bits: int):
  def rule(ctx, lhs, rhs, *args, precision, **kwargs):
    lhs_aval, rhs_aval = ctx.avals_in[:2]
    round_lhs, round_rhs = _rounded_operands(precision)
    if round_lhs:
      lhs = _round(lhs, lhs_aval, mantissa_bits)
    if round_rhs:
      rhs = _round(rhs, rhs_aval, mantissa_bits)
    return original(ctx, lhs, rhs, *args, precision=precision, **kwargs)
  return rule


_PRIMITIVES = (_lax.dot_general_p, _convolution.conv_general_dilated_p)


@contextlib.contextmanager
def emulate(mode: str = "tf32"):
  """Round non-HIGHEST float32 matmul operands on CPU as ``mode`` does.

  Args:
    mode: ``"tf32"`` (NVIDIA GPUs) or ``"bf16"`` (TPUs).
  """
  bits = MODES[mode]
  table = mlir._platform_specific_lowerings["cpu"]
  saved = {p: table.get(p) for p in _PRIMITIVES}
  jax.clear_caches()
  try:
    for prim in _PRIMITIVES:
      entry = saved[prim] or mlir._lowerings[prim]
      mlir.register_lowering(prim, _wrap(entry.rule, bits), platform="cpu",
                             inline=entry.inline)
    yield mode
  finally:
    for prim, entry in saved.items():
      if entry is None:
        del table[prim]
      else:
        table[prim] = entry
    jax.clear_caches()
