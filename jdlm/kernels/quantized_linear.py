"""When jdlm/model.py's quantised linear layers run the weight-only matmul kernel (jdlm/kernels/weight_only_matmul.py)
instead of XLA's einsum, and the reshapes between the model's einsums and the kernel's [M, K] @ [K, N].

Each function returns the kernel's result, or None where the caller should run XLA's einsum: float weights, the mode
says no, more than MAX_ROWS rows (prefill and full forwards are compute-bound: XLA's GEMM), or shapes no tiling
divides.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jdlm.kernels import weight_only_matmul as wom
from jdlm.kernels.switch import KernelSwitch

MAX_ROWS = 256  # more rows (prefill, full forwards) are not weight-bound: XLA's GEMM
MODES = ("auto", "on", "fused", "off")
# Off by default: measured on an H100, no faster than XLA end to end (docs/quantization.md).
SWITCH = KernelSwitch("quantized_linear", "kernel", MODES)


def current_mode() -> str:
    """The mode `set_mode` last set."""
    return SWITCH.mode


def set_mode(mode: str) -> str:
    """Whether the model's quantised linears use the kernel. Returns the previous mode.

    "auto": one kernel call per weight on an Ampere or newer GPU outside a multi-device mesh, XLA elsewhere;
    "on": one kernel call per weight everywhere (Pallas's interpreter off GPU: for tests);
    "fused": as "on", and a layer's q, k, v in one call and its gate, up and SwiGLU in another (for params whose
      projections are already one weight each, `jdlm.fuse_projections`, one call per fused weight, as "on");
    "off" (the default): never (XLA's einsum).
    Read when a function is traced (`jdlm.kernels.switch.KernelSwitch`)."""
    return SWITCH.set(mode)


def use_kernel(mode: str):
    """`set_mode(mode)` for the duration of a with-block."""
    return SWITCH.use(mode)


def _enabled() -> bool:
    return SWITCH.auto_applies() if SWITCH.mode == "auto" else SWITCH.mode != "off"


def _quantized(*weights) -> bool:
    return all(w is not None and jnp.dtype(w.dtype) in wom.WEIGHT_DTYPES for w in weights)


def matmul_axes(spec: str, x_shape: tuple, w_shape: tuple) -> tuple[tuple, tuple, int, int, int] | None:
    """(x's row axes, w's output axes, M, K, N) of an einsum that is an [M, K] @ [K, N] matmul in disguise: `spec`
    "rows, contracted -> rows, out" with x's contracted axes last and w's first (as every linear in jdlm/model.py);
    None for any other spec."""
    inputs, out = spec.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    contracted = "".join(a for a in lhs if a in rhs)
    c = len(contracted)
    if not c or not lhs.endswith(contracted) or not rhs.startswith(contracted) or out != lhs[:-c] + rhs[c:]:
        return None
    lead, outs = tuple(x_shape[:-c]), tuple(w_shape[c:])
    return lead, outs, math.prod(lead), math.prod(w_shape[:c]), math.prod(outs)


def kernel_einsum(spec: str, x: jax.Array, w: jax.Array, scale: jax.Array) -> jax.Array | None:
    """`(einsum(spec, x, w) * scale).astype(x.dtype)` by the kernel, or None (see the module docstring; also when
    `spec` is not "rows, contracted -> rows, out" with x's contracted axes last and w's first, as every linear in
    jdlm/model.py is).

    Args:
      spec: e.g. "BTD,DNH->BTNH" (x [B, T, D], w [D, N, H]) or "BTNH,NHD->BTD".
      x: [rows..., contracted...] float.
      w: [contracted..., out...] int8 or float8_e4m3fn.
      scale: [out...] float32.
    """
    if not _enabled() or not _quantized(w):
        return None
    axes = matmul_axes(spec, x.shape, w.shape)
    if axes is None:
        return None
    lead, outs, m, k, n = axes
    if m > MAX_ROWS or wom.default_tiling(m, k, n) is None:
        return None
    y = wom.weight_only_matmul(x.reshape(m, k), w.reshape(k, n), scale.reshape(n))
    return y.reshape(*lead, *outs)


def kernel_projections(x: jax.Array, ws, scales) -> list[jax.Array] | None:
    """[einsum(x, w) * scale for each weight] in one kernel call (mode "fused"), or None.

    Args:
      x: [rows..., D] float; ws: weights [D, out_i...] (q [D, N, H], k and v [D, K, H]); scales: [out_i...].

    Returns:
      [[rows..., out_i...] in x's dtype].
    """
    if SWITCH.mode != "fused" or not _quantized(*ws) or any(s is None for s in scales):
        return None
    lead, k = x.shape[:-1], x.shape[-1]
    m, widths = math.prod(lead), [math.prod(w.shape[1:]) for w in ws]
    if m > MAX_ROWS or wom.model_tiling(m, k, sum(widths), column_multiple=math.gcd(*widths)) is None:
        return None
    outs = wom.grouped_weight_only_matmul(x.reshape(m, k), [w.reshape(k, -1) for w in ws],
                                          [s.reshape(-1) for s in scales])
    return [y.reshape(*lead, *w.shape[1:]) for y, w in zip(outs, ws)]


def kernel_swiglu(x: jax.Array, gate: jax.Array, up: jax.Array, gate_scale, up_scale) -> jax.Array | None:
    """silu(x @ gate) * (x @ up) of quantised weights in one kernel call (mode "fused"), or None.

    Args:
      x: [rows..., D] float; gate, up: [D, F]; gate_scale, up_scale: [F] (None for float weights).

    Returns:
      [rows..., F] in x's dtype.
    """
    if SWITCH.mode != "fused" or not _quantized(gate, up) or gate_scale is None or up_scale is None:
        return None
    lead, (k, n) = x.shape[:-1], gate.shape
    m = math.prod(lead)
    if m > MAX_ROWS or wom.model_tiling(m, k, n) is None:
        return None
    y = wom.swiglu_weight_only_matmul(x.reshape(m, k), gate, up, gate_scale, up_scale)
    return y.reshape(*lead, n)
