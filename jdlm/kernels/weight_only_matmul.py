"""x @ (w * scale) for few rows of x and int8 / fp8 weights: a Pallas kernel (Triton on GPU) that reads each weight
once, in one byte, converts it to x's dtype in registers and accumulates in float32.

A cached decode step at batch 1 runs a block of 32 query rows through every linear layer, so its matmuls are
[32, K] @ [K, N] with K, N in the thousands: the time is the weight read. XLA fuses the int8 -> bf16 convert into
its Triton GEMM but reads the weights at about 60% of the HBM bandwidth there (docs/quantization.md). This kernel
tiles N (block_n) and K (block_k), loops over K inside each program, and splits K over a grid axis (`splits`) when
N alone gives too few programs to keep every SM reading; the splits' float32 partial sums [splits, M, N] are added
afterwards (XLA fuses that sum with the cast). The per-column scale is applied once, to each program's sum.

    grid (M / block_m, N / block_n, splits); program (i, j, s) computes, over its K range of K / splits rows,
      out[s, i-th block_m rows, j-th block_n columns] = sum_k x[rows, k] * float(w[k, cols])  * scale[cols]

`swap_ab` computes the transposed product w^T x^T instead (the weight tile as the tensor cores' left operand, the
few rows of x as the narrow right one), a layout that suits Hopper's tensor cores when M is small.

`kernel_einsum` is what jdlm/model.py's `linear` calls: the kernel for the einsums of the model's quantised linear
layers where it applies (`mode` below), None where the XLA einsum should run instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jdlm.quantize import _compute_capability

MAX_ROWS = 256  # `kernel_einsum` leaves larger matmuls (prefill, full forwards) to XLA: they are not weight-bound
WEIGHT_DTYPES = (jnp.dtype(jnp.int8), jnp.dtype(jnp.float8_e4m3fn))
BLOCKS = (128, 64, 32, 16)  # tile sizes tried, largest first; Triton tiles are powers of two, tensor-core dots >= 16
SHARED_BYTES = 96 << 10  # shared memory the default tiling's pipeline stages may take
DEFAULT_SMS = 132  # an H100 SXM's streaming multiprocessors, when the device does not say
TILINGS_ENV = "JDLM_WEIGHT_ONLY_TILINGS"
TILINGS_FILE = Path(__file__).with_name("weight_only_tilings.json")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tiling:
    """How the kernel cuts [M, K] @ [K, N]: tile sizes (powers of two, >= 16), the K splits (a divisor of
    K / block_k), Triton's warps per program and software-pipelining stages, and the operand order."""

    block_m: int
    block_n: int
    block_k: int
    splits: int = 1
    num_warps: int = 4
    num_stages: int = 4
    swap_ab: bool = False

    def check(self, m: int, k: int, n: int) -> None:
        """A ValueError saying what is wrong when this tiling cannot cut [m, k] @ [k, n]."""
        for field in ("block_m", "block_n", "block_k"):
            size = getattr(self, field)
            if size < 16 or size & (size - 1):
                raise ValueError(f"{field}={size} must be a power of two >= 16 (Triton tiles, tensor-core dots)")
        if n % self.block_n:
            raise ValueError(f"N={n} is not a multiple of block_n={self.block_n}")
        if self.splits < 1 or k % (self.splits * self.block_k):
            raise ValueError(f"K={k} is not a multiple of splits * block_k = {self.splits} * {self.block_k}; "
                             "the kernel has no masked K tail (default_tiling picks sizes that divide K)")
        if self.num_warps < 1 or self.num_stages < 1:
            raise ValueError(f"num_warps={self.num_warps} and num_stages={self.num_stages} must be >= 1")

    def padded_rows(self, m: int) -> int:
        """M rounded up to whole row blocks (x is padded with zero rows to this)."""
        return -(-m // self.block_m) * self.block_m


def default_tiling(m: int, k: int, n: int) -> Tiling | None:
    """The tiling the kernel uses for [m, k] @ [k, n] on this device: a measured one from the tilings table
    (`tuned_tilings`) where it has this device and shape, else `model_tiling`'s. None when no tile divides K or N."""
    key = tiling_key(m, k, n)
    fields = tuned_tilings().get(jax.devices()[0].device_kind, {}).get(key)
    if fields is not None:
        tiling = Tiling(**fields)
        try:
            tiling.check(m, k, n)
            return tiling
        except ValueError:
            pass  # a table entry for other rows that round to the same key: fall back to the model
    return model_tiling(m, k, n)


def tiling_key(m: int, k: int, n: int) -> str:
    """The tilings table's key of a shape: "rows,K,N" with M rounded up to a power of two >= 16."""
    return f"{max(16, 1 << max(0, m - 1).bit_length())},{k},{n}"


@functools.cache
def _read_tilings(path: str) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def tuned_tilings() -> dict:
    """{device kind: {tiling_key: Tiling fields}}: the fastest tilings scripts/bench_weight_only_matmul.py measured,
    from the file named by $JDLM_WEIGHT_ONLY_TILINGS, else jdlm/kernels/weight_only_tilings.json; {} without one."""
    return _read_tilings(os.environ.get(TILINGS_ENV) or str(TILINGS_FILE))


def model_tiling(m: int, k: int, n: int, num_sms: int | None = None) -> Tiling | None:
    """A tiling for [m, k] @ [k, n] from a bandwidth model, or None when no power-of-two tile >= 16 divides K or N.

    One row block up to 64 rows (x is padded to a power of two >= 16), K tiles of up to 128. The column tile (128
    or 64 where they divide N) and the K splits (divisors of K / block_k) minimise a bandwidth model: the bytes
    moved, the weights plus the float32 partial sums written and read back (2 * splits * rows * N * 4 when
    splits > 1), over the share of the `num_sms` streaming multiprocessors the programs keep busy."""
    block_m = min(64, max(16, 1 << max(0, m - 1).bit_length()))
    block_k = next((b for b in BLOCKS if k % b == 0), None)
    block_ns = [b for b in BLOCKS if n % b == 0]
    if block_k is None or not block_ns:
        return None
    num_sms = num_sms or sm_count()
    rows = -(-m // block_m) * block_m
    steps = k // block_k

    def cost(tiling: Tiling) -> float:
        programs = rows // block_m * (n // tiling.block_n) * tiling.splits
        partials = 0 if tiling.splits == 1 else 2 * tiling.splits * rows * n * 4
        return (k * n + partials) / min(1.0, programs / num_sms)

    candidates = [Tiling(block_m=block_m, block_n=block_n, block_k=block_k, splits=splits)
                  for block_n in ([b for b in block_ns if b >= 64] or block_ns[:1])
                  for splits in range(1, steps + 1) if steps % splits == 0]
    best = min(candidates, key=lambda t: (cost(t), t.splits, -t.block_n))
    # Software pipelining keeps num_stages tiles of x and w in shared memory: stay within 96 KB (H100 and A100 have
    # 228 and 164 KB), 2 to 4 stages.
    stage_bytes = block_m * block_k * 2 + block_k * best.block_n
    return dataclasses.replace(best, num_stages=max(2, min(4, SHARED_BYTES // stage_bytes)))


def sm_count() -> int:
    return int(getattr(jax.devices()[0], "core_count", None) or DEFAULT_SMS)


def weight_only_matmul(x: jax.Array, w: jax.Array, scale: jax.Array, *, tiling: Tiling | None = None,
                       interpret: bool | None = None, **tiling_fields) -> jax.Array:
    """x @ (w * scale) with the weight converted to x's dtype in the kernel and float32 accumulation.

    Args:
      x: [M, K] float (bfloat16 on GPU; float32 works too).
      w: [K, N] int8 or float8_e4m3fn.
      scale: [N] float32, one per output column.
      tiling: how to cut the matmul; default `default_tiling(M, K, N)`, with any of Tiling's fields given as keyword
        arguments (block_n=64, splits=4, ...) replacing its values.
      interpret: run the kernel through Pallas's interpreter (any backend); default: everywhere but on GPU.

    Returns:
      [M, N] in x's dtype.
    """
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0] or scale.shape != w.shape[1:]:
        raise ValueError(f"want x [M, K], w [K, N], scale [N]; got {x.shape}, {w.shape}, {scale.shape}")
    if jnp.dtype(w.dtype) not in WEIGHT_DTYPES:
        raise ValueError(f"w must be int8 or float8_e4m3fn, not {w.dtype}")
    (m, k), n = x.shape, w.shape[1]
    if tiling is None:
        tiling = default_tiling(m, k, n)
        if tiling is None:
            raise ValueError(f"no power-of-two tile >= 16 divides K={k} and N={n}; use the XLA einsum")
    tiling = dataclasses.replace(tiling, **tiling_fields)
    tiling.check(m, k, n)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    rows = tiling.padded_rows(m)
    x = jnp.pad(x, ((0, rows - m), (0, 0))) if rows != m else x
    partials = _call(x, w, scale.astype(jnp.float32), tiling, interpret)  # [splits, rows, N] or [splits, N, rows]
    if tiling.swap_ab:
        partials = jnp.swapaxes(partials, 1, 2)
    out = partials[0] if tiling.splits == 1 else partials.sum(axis=0)
    return out[:m].astype(x.dtype)


def _call(x, w, scale, tiling: Tiling, interpret: bool) -> jax.Array:
    """The pallas_call: [splits, rows, N] partial products (scaled; [splits, N, rows] with swap_ab), float32 when
    they still need adding up, else x's dtype."""
    rows, k = x.shape
    n = w.shape[1]
    t = tiling
    span = k // t.splits  # the K rows each program reduces over
    grid = (rows // t.block_m, n // t.block_n, t.splits)  # the row blocks vary fastest: they share a weight tile
    out_dtype = x.dtype if t.splits == 1 else jnp.float32
    if t.swap_ab:
        out_shape = jax.ShapeDtypeStruct((t.splits, n, rows), out_dtype)
        out_spec = pl.BlockSpec((None, t.block_n, t.block_m), lambda i, j, s: (s, j, i))
    else:
        out_shape = jax.ShapeDtypeStruct((t.splits, rows, n), out_dtype)
        out_spec = pl.BlockSpec((None, t.block_m, t.block_n), lambda i, j, s: (s, i, j))
    return pl.pallas_call(
        functools.partial(_kernel, block_k=t.block_k, steps=span // t.block_k, swap_ab=t.swap_ab),
        out_shape=out_shape,
        grid=grid,
        in_specs=[
            pl.BlockSpec((t.block_m, span), lambda i, j, s: (i, s)),  # x rows, this split's K range
            pl.BlockSpec((span, t.block_n), lambda i, j, s: (s, j)),  # w: this split's K range, this column tile
            pl.BlockSpec((t.block_n,), lambda i, j, s: (j,)),  # scale of this column tile
        ],
        out_specs=out_spec,
        compiler_params=None if interpret else triton_params(t.num_warps, t.num_stages),
        interpret=interpret,
        name="weight_only_matmul",
    )(x, w, scale)


def _kernel(x_ref, w_ref, scale_ref, out_ref, *, block_k: int, steps: int, swap_ab: bool):
    """One program: x_ref [block_m, span], w_ref [span, block_n], scale_ref [block_n], out_ref [block_m, block_n]
    ([block_n, block_m] with swap_ab)."""

    def accumulate(i, acc):
        start = pl.multiple_of(i * block_k, block_k)
        x = x_ref[:, pl.ds(start, block_k)]  # [block_m, block_k]
        w = w_ref[pl.ds(start, block_k), :].astype(x.dtype)  # [block_k, block_n]: 1 byte a weight from memory
        if swap_ab:  # [block_n, block_m] = w^T x^T
            return acc + jax.lax.dot_general(w, x, (((0,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        return acc + jax.lax.dot(x, w, preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(0, steps, accumulate, jnp.zeros(out_ref.shape, jnp.float32))
    scale = scale_ref[...]  # [block_n]
    out_ref[...] = (acc * (scale[:, None] if swap_ab else scale[None, :])).astype(out_ref.dtype)


def triton_params(num_warps: int, num_stages: int):
    """Pallas's Triton compiler parameters, wherever this jax keeps them: `jax.experimental.pallas.triton.
    CompilerParams` (jax 0.6 onward, 0.10 and 0.11 included), `pallas.gpu.TritonCompilerParams` (0.4.3x-0.5), or the
    dict older versions took."""
    try:
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    except (ImportError, AttributeError):
        pass
    try:
        from jax.experimental.pallas import gpu as plgpu

        return plgpu.TritonCompilerParams(num_warps=num_warps, num_stages=num_stages)
    except (ImportError, AttributeError):
        return {"triton": {"num_warps": num_warps, "num_stages": num_stages}}


# ---------------------------------------------------------------- when jdlm uses it

MODES = ("auto", "on", "off")
MIN_CAPABILITY = (8, 0)  # Ampere on: Triton's bf16 tensor-core dots
_mode = "auto"


def set_mode(mode: str) -> str:
    """Whether `kernel_einsum` uses the kernel: "auto" (on an Ampere or newer GPU, outside a multi-device mesh),
    "on" (everywhere; Pallas's interpreter off GPU, for tests), "off" (never: the XLA einsum). Returns the previous
    mode. Read when a function is traced: set it before the first call of a jitted function, or clear jax's caches
    after (jax.clear_caches())."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"unknown kernel mode {mode!r}; choose one of {', '.join(MODES)}")
    previous, _mode = _mode, mode
    return previous


@contextlib.contextmanager
def use_kernel(mode: str):
    """`set_mode(mode)` for the duration of a with-block."""
    previous = set_mode(mode)
    try:
        yield
    finally:
        set_mode(previous)


def _enabled() -> bool:
    if _mode != "auto":
        return _mode == "on"
    # Under a mesh the weights are split over devices, and a pallas_call has no partitioning rule: XLA would gather
    # every weight onto every device. Leave sharded matmuls to XLA.
    if jax.default_backend() != "gpu" or jax.sharding.get_abstract_mesh().size > 1:
        return False
    capability = _compute_capability(jax.devices()[0])
    return capability is not None and capability >= MIN_CAPABILITY


def kernel_einsum(spec: str, x: jax.Array, w: jax.Array, scale: jax.Array) -> jax.Array | None:
    """`(einsum(spec, x, w) * scale).astype(x.dtype)` by the kernel, or None where it does not apply: the mode says
    no, more than MAX_ROWS rows, no tiling divides the shapes, or `spec` is not "rows, contracted -> rows, out" with
    x's contracted axes last and w's first (every linear in jdlm/model.py is).

    Args:
      spec: e.g. "BTD,DNH->BTNH" (x [B, T, D], w [D, N, H]) or "BTNH,NHD->BTD".
      x: [rows..., contracted...] float.
      w: [contracted..., out...] int8 or float8_e4m3fn.
      scale: [out...] float32.
    """
    if not _enabled() or jnp.dtype(w.dtype) not in WEIGHT_DTYPES:
        return None
    inputs, out = spec.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    contracted = "".join(a for a in lhs if a in rhs)
    c = len(contracted)
    if not c or not lhs.endswith(contracted) or not rhs.startswith(contracted) or out != lhs[:-c] + rhs[c:]:
        return None
    lead, outs = x.shape[:-c], w.shape[c:]
    m, k, n = math.prod(lead), math.prod(w.shape[:c]), math.prod(outs)
    tiling = default_tiling(m, k, n) if m <= MAX_ROWS else None
    if tiling is None:
        return None
    y = weight_only_matmul(x.reshape(m, k), w.reshape(k, n), scale.reshape(n), tiling=tiling,
                           interpret=jax.default_backend() != "gpu")
    return y.reshape(*lead, *outs)
