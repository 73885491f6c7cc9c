"""The SwiGLU MLP's first half, silu(x @ gate) * (x @ up), for int8 gate and up stored as byte pairs: the layout
`jdlm.fuse_projections` gives an int8 layer, and a Pallas kernel (Triton on GPU) for a batch-1 cached step.

    gate_up_pairs [D, F] int16: element (d, f) holds gate[d, f] in its low byte and up[d, f] in its high byte
                                (jdlm.quantize's `pair_bytes`; read as int8 [D, F, 2] it is gate, up side by side:
                                `split_pairs`)
    gate_up_pairs_scale [2, F] float32: gate's per-column scales, then up's

In the kernel each byte becomes an exact float16 by integer arithmetic, with no convert instruction: for a byte b
holding the int8 value v, (b ^ 0x6480) read as a float16 is 1024 + (v + 128), 0x6400 being 1024.0 and its ulp 1,
so subtracting 1152 leaves v. x is rounded to float16 (clipped to its +-65504; 10 mantissa bits against bfloat16's
7), the products accumulate in float32. The grid runs over column tiles of F and SPLITS ranges of D; each program
writes float32 partial sums of gate and up for its tile, and XLA adds the ranges, applies the scales and the SwiGLU
in one fusion.

Measured on one H100 (LLaDA-8B random weights, int8, fused projections, B=1, dual cache, one token a step, prompt
256): 192.0 tokens/s with XLA's int8 GEMM for gate|up, 202.3 with this kernel (docs/quantization.md). The
same byte trick on q|k|v, o or down was no faster than XLA there, and without the pair layout (gate and up tiles
read apart) neither, so only gate|up takes it. More rows (batch 8, full forwards) and other GPUs run XLA's einsum
on the same int8 bytes (`xla_swiglu`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jdlm.kernels import weight_only_matmul as wom
from jdlm.kernels.float_linear import AUTO_CAPABILITY, MIN_AUTO_WEIGHT_BYTES, with_xla_derivatives
from jdlm.kernels.switch import KernelSwitch
from jdlm.quantize import split_pairs

ROWS = (16, 32, 64)  # a batch-1 cached step's block, one row tile (Triton dots take powers of two >= 16)
BLOCK_N, BLOCK_K, SPLITS, NUM_WARPS, NUM_STAGES = 64, 64, 2, 4, 4  # the tiling measured best in the decode
FLOAT16_MAX = 65504.0
MODES = ("auto", "on", "off")
SWITCH = KernelSwitch("int8_swiglu", "int8 SwiGLU kernel", MODES, default="auto")


def set_mode(mode: str) -> str:
    """Whether int8 gate|up pairs with few rows use the kernel. Returns the previous mode.

    "auto" (the default): as the float matmul kernel's (jdlm/kernels/float_linear.py: measured on Hopper, small
    models' matmuls launch-bound), on a Hopper or newer GPU outside a multi-device mesh, for pairs of at least
    MIN_AUTO_WEIGHT_BYTES; "on": everywhere the shapes allow (Pallas's interpreter off GPU: for tests); "off":
    never (`xla_swiglu`). Read when a function is traced (`jdlm.kernels.switch.KernelSwitch`)."""
    return SWITCH.set(mode)


def use_kernel(mode: str):
    """`set_mode(mode)` for the duration of a with-block."""
    return SWITCH.use(mode)


def xla_swiglu(x: jax.Array, pairs: jax.Array, scale: jax.Array) -> jax.Array:
    """silu(x @ (gate * scale[0])) * (x @ (up * scale[1])) by XLA's einsum, the int8 -> x.dtype convert fused into
    its GEMM. x [..., D] float, pairs [D, F] int16, scale [2, F] float32 -> [..., F] in x's dtype."""
    both = jnp.einsum("...D,DFI->...FI", x, split_pairs(pairs).astype(x.dtype), preferred_element_type=jnp.float32)
    gate, up = both[..., 0] * scale[0], both[..., 1] * scale[1]
    return (jax.nn.silu(gate) * up).astype(x.dtype)


def kernel_swiglu(x: jax.Array, pairs: jax.Array, scale: jax.Array) -> jax.Array | None:
    """`xla_swiglu(x, pairs, scale)` by the kernel, or None where the caller should run `xla_swiglu`: the mode
    says no, the rows are not one tile of ROWS, or the tiling does not divide D and F.

    Args:
      x: [rows..., D] float; pairs: [D, F] int16 (jdlm.quantize's `pair_bytes`); scale: [2, F] float32.

    Returns:
      [rows..., F] in x's dtype.
    """
    lead, (k, n) = x.shape[:-1], pairs.shape
    m = math.prod(lead)
    if not _enabled(pairs) or m not in ROWS or n % BLOCK_N or k % (BLOCK_K * SPLITS):
        return None

    def kernel(x, pairs, scale):
        return paired_swiglu(x.reshape(m, k), pairs, scale).reshape(*lead, n)

    return with_xla_derivatives(kernel, xla_swiglu)(x, pairs, scale)


def _enabled(pairs: jax.Array) -> bool:
    if SWITCH.mode != "auto":
        return SWITCH.mode == "on"
    return pairs.nbytes >= MIN_AUTO_WEIGHT_BYTES and SWITCH.auto_applies(AUTO_CAPABILITY)


def paired_swiglu(x: jax.Array, pairs: jax.Array, scale: jax.Array, *, interpret: bool | None = None) -> jax.Array:
    """The kernel: x [M, D] (M in ROWS), pairs [D, F] int16, scale [2, F] -> [M, F] in x's dtype.
    `interpret`: Pallas's interpreter (default: everywhere but on GPU)."""
    gate, up = paired_products(x, pairs, interpret=interpret)
    return (jax.nn.silu(gate * scale[0]) * (up * scale[1])).astype(x.dtype)


def paired_products(x: jax.Array, pairs: jax.Array, *, block_n: int = BLOCK_N, block_k: int = BLOCK_K,
                    splits: int = SPLITS, num_warps: int = NUM_WARPS, num_stages: int = NUM_STAGES,
                    interpret: bool | None = None) -> tuple[jax.Array, jax.Array]:
    """(x @ low bytes, x @ high bytes) of int16 pairs, unscaled: x [M, D] float (rounded to float16), pairs [D, F]
    -> two [M, F] float32. The grid runs over F's column tiles of `block_n` and `splits` ranges of D (walked in
    tiles of `block_k`); the ranges' partial sums are added by XLA. Powers of two >= 16 that divide F and
    D / splits; M a power of two >= 16 (one row tile). `interpret`: default everywhere but on GPU."""
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    (m, k), n = x.shape, pairs.shape[1]
    span = k // splits
    partial_sums = jax.ShapeDtypeStruct((splits, m, n), jnp.float32)
    out_spec = pl.BlockSpec((None, m, block_n), lambda j, s: (s, 0, j))
    low, high = pl.pallas_call(
        functools.partial(_kernel, block_k=block_k, steps=span // block_k),
        out_shape=[partial_sums, partial_sums],
        grid=(n // block_n, splits),
        in_specs=[pl.BlockSpec((m, span), lambda j, s: (0, s)), pl.BlockSpec((span, block_n), lambda j, s: (s, j))],
        out_specs=[out_spec, out_spec],
        compiler_params=None if interpret else wom.triton_params(num_warps, num_stages),
        interpret=interpret,
        name="int8_swiglu",
    )(jnp.clip(x, -FLOAT16_MAX, FLOAT16_MAX).astype(jnp.float16), pairs)
    return low.sum(0), high.sum(0)


def byte_values(pairs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """int16 pairs -> (float16 of the low bytes, float16 of the high bytes): exactly their int8 values."""
    low = jax.lax.bitcast_convert_type((pairs & 0xFF) ^ 0x6480, jnp.float16)
    high = jax.lax.bitcast_convert_type(((pairs >> 8) & 0xFF) ^ 0x6480, jnp.float16)
    return low - jnp.float16(1152), high - jnp.float16(1152)


def _kernel(x_ref, pairs_ref, low_ref, high_ref, *, block_k: int, steps: int):
    """One program: x_ref [M, span] float16, pairs_ref [span, block_n]; low_ref, high_ref [M, block_n] float32."""

    def accumulate(i, sums):
        start = pl.multiple_of(i * block_k, block_k)
        x = x_ref[:, pl.ds(start, block_k)]
        low, high = byte_values(pairs_ref[pl.ds(start, block_k), :])
        return (sums[0] + jax.lax.dot(x, low, preferred_element_type=jnp.float32),
                sums[1] + jax.lax.dot(x, high, preferred_element_type=jnp.float32))

    zero = jnp.zeros(low_ref.shape, jnp.float32)
    low_ref[...], high_ref[...] = jax.lax.fori_loop(0, steps, accumulate, (zero, zero))
