"""When jdlm/model.py's float linear layers run jdlm's Pallas matmul kernel (jdlm/kernels/weight_only_matmul.py,
which reads float weights as they are) instead of XLA's GEMM.

A cached decode step at batch 1 runs a block of 32 rows through every linear layer: each matmul is a read of its
weights. On an H100 at LLaDA-8B shapes the kernel reads the fused q|k|v, gate|up (with the SwiGLU in the same
kernel, so the [rows, 2F] product is never written) and down weights faster than XLA's GEMMs, o about level: with
all four the cached step goes from 6.25-6.26 to 6.02-6.08 ms (docs/performance.md). More rows (batch 8's 256, full
forwards) stay with XLA, whose GEMMs are faster there.

Each function returns the kernel's result, or None where the caller should run XLA's einsum: quantised weights
(jdlm/kernels/quantized_linear.py), the mode says no, more than MAX_ROWS rows or rows that do not fill a row tile
(16, 32 or 64 rows take it; Dream's 33-row cached window does not), or shapes no tiling divides. The results are
differentiable (`jax.grad` of a forward that took the kernel): a pallas_call has no transpose rule, so derivatives
come from XLA's einsum of the same operands (`with_xla_derivatives`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jdlm.kernels import weight_only_matmul as wom
from jdlm.kernels.quantized_linear import matmul_axes
from jdlm.kernels.switch import KernelSwitch

MAX_ROWS = 64  # a batch-1 cached step's block; at 256 rows (batch 8) XLA's GEMMs were faster (docs/performance.md)
# "auto" leaves smaller weights to XLA: a small model's matmuls are launch-bound, not weight reads, and the kernel
# measured no faster there (the shipped tiny model's dual-cache decode on an H100, docs/performance.md)
MIN_AUTO_WEIGHT_BYTES = 16 << 20
AUTO_CAPABILITY = (9, 0)  # measured faster on Hopper; Ampere unmeasured, so XLA there
MODES = ("auto", "on", "off")
SWITCH = KernelSwitch("float_linear", "float matmul kernel", MODES, default="auto")


def set_mode(mode: str) -> str:
    """Whether the model's float linears with few rows use the kernel. Returns the previous mode.

    "auto" (the default): on a Hopper or newer GPU outside a multi-device mesh, for 2-byte weights (bfloat16, as
    measured; float16) of at least MIN_AUTO_WEIGHT_BYTES (16 MiB: LLaDA-8B's smallest is 32 MiB); "on": everywhere,
    any dtype and size (Pallas's interpreter off GPU: for tests); "off": never (XLA's einsum). Read when a function
    is traced (`jdlm.kernels.switch.KernelSwitch`)."""
    return SWITCH.set(mode)


def use_kernel(mode: str):
    """`set_mode(mode)` for the duration of a with-block."""
    return SWITCH.use(mode)


def _enabled(w: jax.Array) -> bool:
    if SWITCH.mode != "auto":
        return SWITCH.mode == "on"
    itemsize = jnp.dtype(w.dtype).itemsize
    return (itemsize == 2 and math.prod(w.shape) * itemsize >= MIN_AUTO_WEIGHT_BYTES
            and SWITCH.auto_applies(AUTO_CAPABILITY))


def _fits(m: int, tiling: wom.Tiling | None) -> bool:
    """At most MAX_ROWS rows that fill their row tile: a padded one was measured slower (Dream-7B's cached window
    of 33 rows in a 64-row tile: a 6.32 ms step against XLA's 5.88)."""
    return tiling is not None and m <= MAX_ROWS and tiling.padded_rows(m) == m


def with_xla_derivatives(kernel, reference):
    """`kernel(*arrays)` when evaluated; under differentiation (forward or reverse mode) `reference`'s value and
    derivatives, the same function by XLA's ops, which have transpose rules where a pallas_call has none."""
    fn = jax.custom_jvp(kernel)
    fn.defjvp(lambda primals, tangents: jax.jvp(reference, primals, tangents))
    return fn


def kernel_einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array | None:
    """`einsum(spec, x, w)` by the kernel, or None (see the module docstring; also when `spec` is not "rows,
    contracted -> rows, out" with x's contracted axes last and w's first, or w's dtype is not x's).

    Args:
      spec: e.g. "BTD,DKSH->BTKSH" (x [B, T, D], w [D, K, S, H]) or "BTF,FD->BTD".
      x: [rows..., contracted...] float; w: [contracted..., out...] in x's dtype.
    """
    if not _enabled(w) or w.dtype != x.dtype:
        return None
    axes = matmul_axes(spec, x.shape, w.shape)
    if axes is None:
        return None
    lead, outs, m, k, n = axes
    tiling = wom.float_tiling(m, k, n)
    if not _fits(m, tiling):
        return None

    def kernel(x, w):
        y = wom.weight_only_matmul(x.reshape(m, k), w.reshape(k, n), None, tiling=tiling)
        return y.reshape(*lead, *outs)

    return with_xla_derivatives(kernel, lambda x, w: jnp.einsum(spec, x, w))(x, w)


def kernel_swiglu(x: jax.Array, gate_up: jax.Array) -> jax.Array | None:
    """silu(x @ gate) * (x @ up) for float gate and up stacked as `jdlm.fuse_projections` stores them, in one kernel
    call, or None.

    Args:
      x: [rows..., D] float; gate_up: [D, 2, F] in x's dtype.

    Returns:
      [rows..., F] in x's dtype.
    """
    if not _enabled(gate_up) or gate_up.dtype != x.dtype:
        return None
    lead, (k, _, n) = x.shape[:-1], gate_up.shape
    m = math.prod(lead)
    tiling = wom.float_tiling(m, k, n, splits=False)
    if not _fits(m, tiling):
        return None

    def kernel(x, gate_up):
        y = wom.stacked_swiglu_matmul(x.reshape(m, k), gate_up, tiling=tiling)
        return y.reshape(*lead, n)

    def reference(x, gate_up):
        y = jnp.einsum("...D,DIF->...IF", x, gate_up)
        return jax.nn.silu(y[..., 0, :]) * y[..., 1, :]

    return with_xla_derivatives(kernel, reference)(x, gate_up)
