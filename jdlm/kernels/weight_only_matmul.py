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

`grouped_weight_only_matmul` runs several weights that share K in one launch (a layer's q, k and v), and
`swiglu_weight_only_matmul` the SwiGLU MLP's gate and up together, writing only silu(gate) * up. When jdlm's model
uses which: jdlm/kernels/quantized_linear.py.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jdlm.quantize import MODES

WEIGHT_DTYPES = tuple(dtype for dtype, _ in MODES.values())  # the stored dtypes of jdlm.quantize's modes
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


def model_tiling(m: int, k: int, n: int, num_sms: int | None = None, *, column_multiple: int | None = None,
                 max_splits: int | None = None, weights: int = 1) -> Tiling | None:
    """A tiling for [m, k] @ [k, n] from a bandwidth model, or None when no power-of-two tile >= 16 divides K or N.

    One row block up to 64 rows (x is padded to a power of two >= 16), K tiles of up to 128. The column tile (128
    or 64 where they divide N) and the K splits (divisors of K / block_k) minimise a bandwidth model: the bytes
    moved, the weights plus the float32 partial sums written and read back (2 * splits * rows * N * 4 when
    splits > 1), over the share of the `num_sms` streaming multiprocessors the programs keep busy.
    `column_multiple`: block_n must also divide it (grouped weights: their widths' gcd); `max_splits`: at most this
    many K splits; `weights`: weight tiles each program reads per K step (2 for SwiGLU), for the shared memory."""
    block_m = min(64, max(16, 1 << max(0, m - 1).bit_length()))
    block_k = next((b for b in BLOCKS if k % b == 0), None)
    block_ns = [b for b in BLOCKS if n % b == 0 and (column_multiple or n) % b == 0]
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
                  for splits in range(1, min(steps, max_splits or steps) + 1) if steps % splits == 0]
    best = min(candidates, key=lambda t: (cost(t), t.splits, -t.block_n))
    # Software pipelining keeps num_stages tiles of x and w in shared memory: stay within 96 KB (H100 and A100 have
    # 228 and 164 KB), 2 to 4 stages.
    stage_bytes = block_m * block_k * 2 + weights * block_k * best.block_n
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
    _check_operands(x, [w], [scale])
    (m, k), n = x.shape, w.shape[1]
    tiling = _tiling(tiling, tiling_fields, default_tiling(m, k, n), k, n)
    tiling.check(m, k, n)
    return _matmuls(x, [w], [scale], tiling, interpret)[0]


def grouped_weight_only_matmul(x: jax.Array, ws, scales, *, tiling: Tiling | None = None,
                               interpret: bool | None = None, **tiling_fields) -> list[jax.Array]:
    """[x @ (w * scale) for each weight] in one kernel launch: the programs run over every weight's column tiles in
    turn (q, k and v of a layer: one launch instead of three, and a wider grid that needs fewer K splits).

    Args:
      x: [M, K] float; ws: weights [K, N_i] (int8 or float8_e4m3fn); scales: [N_i] float32.
      tiling: default `default_tiling(M, K, sum N_i)` (`model_tiling`'s when its block_n does not divide every N_i);
        block_n must divide every N_i.

    Returns:
      [[M, N_i] in x's dtype for each weight].
    """
    _check_operands(x, ws, scales)
    (m, k), widths = x.shape, [w.shape[1] for w in ws]
    column = math.gcd(*widths)
    default = default_tiling(m, k, sum(widths))
    if default is None or column % default.block_n:
        default = model_tiling(m, k, sum(widths), column_multiple=column)
    tiling = _tiling(tiling, tiling_fields, default, k, sum(widths))
    for n in widths:
        tiling.check(m, k, n)
    return _matmuls(x, ws, scales, tiling, interpret)


def swiglu_weight_only_matmul(x: jax.Array, gate: jax.Array, up: jax.Array, gate_scale: jax.Array,
                              up_scale: jax.Array, *, tiling: Tiling | None = None, interpret: bool | None = None,
                              **tiling_fields) -> jax.Array:
    """silu(x @ (gate * gate_scale)) * (x @ (up * up_scale)), the SwiGLU MLP's first half, in one kernel launch:
    each program computes a column tile of both products from the same x tiles and writes only their product.

    Args:
      x: [M, K] float; gate, up: [K, N] int8 or float8_e4m3fn; gate_scale, up_scale: [N] float32.
      tiling: default `model_tiling(M, K, N)` without K splits (the nonlinearity needs whole sums); splits must be 1.

    Returns:
      [M, N] in x's dtype.
    """
    _check_operands(x, [gate, up], [gate_scale, up_scale])
    if gate.shape != up.shape:
        raise ValueError(f"gate {gate.shape} and up {up.shape} must have one shape")
    (m, k), n = x.shape, gate.shape[1]
    tiling = _tiling(tiling, tiling_fields, model_tiling(m, k, n, max_splits=1, weights=2), k, n)
    tiling.check(m, k, n)
    if tiling.splits != 1:
        raise ValueError(f"splits={tiling.splits}: the SwiGLU kernel needs each program's whole K sum (splits=1)")
    return _matmuls(x, [gate, up], [gate_scale, up_scale], tiling, interpret, swiglu=True)[0]


def _check_operands(x, ws, scales) -> None:
    for w, scale in zip(ws, scales, strict=True):
        if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0] or scale.shape != w.shape[1:]:
            raise ValueError(f"want x [M, K], w [K, N], scale [N]; got {x.shape}, {w.shape}, {scale.shape}")
        if jnp.dtype(w.dtype) not in WEIGHT_DTYPES:
            raise ValueError(f"w must be int8 or float8_e4m3fn, not {w.dtype}")


def _tiling(tiling: Tiling | None, fields: dict, default: Tiling | None, k: int, n: int) -> Tiling:
    if tiling is None:
        if default is None:
            raise ValueError(f"no power-of-two tile >= 16 divides K={k} and N={n}; use the XLA einsum")
        tiling = default
    return dataclasses.replace(tiling, **fields)


def _matmuls(x, ws, scales, tiling: Tiling, interpret: bool | None, swiglu: bool = False) -> list[jax.Array]:
    """Pads x to whole row blocks, runs the kernel, adds up the K splits' partial sums and casts to x's dtype."""
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    m = x.shape[0]
    rows = tiling.padded_rows(m)
    padded = jnp.pad(x, ((0, rows - m), (0, 0))) if rows != m else x
    outs = []
    for partials in _call(padded, ws, [s.astype(jnp.float32) for s in scales], tiling, interpret, swiglu):
        if tiling.swap_ab:  # [splits, N, rows] -> [splits, rows, N]
            partials = jnp.swapaxes(partials, 1, 2)
        out = partials[0] if tiling.splits == 1 else partials.sum(axis=0)
        outs.append(out[:m].astype(x.dtype))
    return outs


def _call(x, ws, scales, tiling: Tiling, interpret: bool, swiglu: bool) -> list[jax.Array]:
    """The pallas_call: per weight, [splits, rows, N_i] partial products (scaled; [splits, N_i, rows] with swap_ab),
    float32 when they still need adding up, else x's dtype; with `swiglu`, one output silu(gate) * up."""
    rows, k = x.shape
    t = tiling
    span = k // t.splits  # the K rows each program reduces over
    tiles = [w.shape[1] // t.block_n for w in ws]
    # Program column j: with swiglu, tile j of both weights; else tile j - starts[i] of the weight i it falls in.
    starts = [0] * len(ws) if swiglu else [sum(tiles[:i]) for i in range(len(ws))]
    grid = (rows // t.block_m, tiles[0] if swiglu else sum(tiles), t.splits)  # row blocks fastest: they share w
    out_dtype = x.dtype if t.splits == 1 else jnp.float32
    columns = [_column_map(start, size, grid[1]) for start, size in zip(starts, tiles)]
    in_specs = [pl.BlockSpec((t.block_m, span), lambda i, j, s: (i, s))]  # x rows, this split's K range
    in_specs += [pl.BlockSpec((span, t.block_n), _weight_map(c)) for c in columns]  # split's K range, column tile
    in_specs += [pl.BlockSpec((t.block_n,), _scale_map(c)) for c in columns]
    outputs = [(w.shape[1], c) for w, c in zip(ws, columns)][: 1 if swiglu else len(ws)]
    if t.swap_ab:
        out_shapes = [jax.ShapeDtypeStruct((t.splits, n, rows), out_dtype) for n, _ in outputs]
        out_specs = [pl.BlockSpec((None, t.block_n, t.block_m), _out_map(c, swap_ab=True)) for _, c in outputs]
    else:
        out_shapes = [jax.ShapeDtypeStruct((t.splits, rows, n), out_dtype) for n, _ in outputs]
        out_specs = [pl.BlockSpec((None, t.block_m, t.block_n), _out_map(c, swap_ab=False)) for _, c in outputs]
    kernel = functools.partial(_kernel, block_k=t.block_k, steps=span // t.block_k, swap_ab=t.swap_ab,
                               starts=tuple(starts), tiles=tuple(tiles), swiglu=swiglu)
    return pl.pallas_call(
        kernel,
        out_shape=out_shapes,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        compiler_params=None if interpret else triton_params(t.num_warps, t.num_stages),
        interpret=interpret,
        name="weight_only_matmul",
    )(x, *ws, *scales)


def _column_map(start: int, size: int, columns: int):
    """A weight's column tile for program column j: j - start, clamped into the weight's `size` tiles (programs
    whose column lies in another weight's range compute an index for it, but never touch that block)."""
    if start == 0 and size == columns:
        return lambda j: j
    return lambda j: jnp.clip(j - start, 0, size - 1)


def _weight_map(column):
    return lambda i, j, s: (s, column(j))


def _scale_map(column):
    return lambda i, j, s: (column(j),)


def _out_map(column, swap_ab: bool):
    if swap_ab:
        return lambda i, j, s: (s, column(j), i)
    return lambda i, j, s: (s, i, column(j))


def _kernel(x_ref, *refs, block_k: int, steps: int, swap_ab: bool, starts: tuple, tiles: tuple, swiglu: bool):
    """One program: x_ref [block_m, span]; per weight w_ref [span, block_n] and scale_ref [block_n]; out_refs
    [block_m, block_n] ([block_n, block_m] with swap_ab)."""
    count = len(tiles)
    w_refs, scale_refs, out_refs = refs[:count], refs[count:2 * count], refs[2 * count:]
    if swiglu:
        gate, up = _tile_products(x_ref, w_refs, scale_refs, block_k, steps, swap_ab)
        out_refs[0][...] = (jax.nn.silu(gate) * up).astype(out_refs[0].dtype)
        return
    j = pl.program_id(1)
    for w_ref, scale_ref, out_ref, start, size in zip(w_refs, scale_refs, out_refs, starts, tiles, strict=True):

        def store(w_ref=w_ref, scale_ref=scale_ref, out_ref=out_ref):
            (product,) = _tile_products(x_ref, [w_ref], [scale_ref], block_k, steps, swap_ab)
            out_ref[...] = product.astype(out_ref.dtype)

        if count == 1:
            store()
        else:  # only the programs whose column falls in this weight's tiles
            pl.when((j >= start) & (j < start + size))(store)


def _tile_products(x_ref, w_refs, scale_refs, block_k: int, steps: int, swap_ab: bool) -> list[jax.Array]:
    """Each weight's scaled float32 product tile over this program's K range, from one pass over the x tiles."""

    def accumulate(i, accs):
        start = pl.multiple_of(i * block_k, block_k)
        x = x_ref[:, pl.ds(start, block_k)]  # [block_m, block_k]
        out = []
        for acc, w_ref in zip(accs, w_refs):
            w = w_ref[pl.ds(start, block_k), :].astype(x.dtype)  # [block_k, block_n]: 1 byte a weight from memory
            if swap_ab:  # [block_n, block_m] = w^T x^T
                out.append(acc + jax.lax.dot_general(w, x, (((0,), (1,)), ((), ())),
                                                     preferred_element_type=jnp.float32))
            else:
                out.append(acc + jax.lax.dot(x, w, preferred_element_type=jnp.float32))
        return tuple(out)

    shape = (w_refs[0].shape[1], x_ref.shape[0]) if swap_ab else (x_ref.shape[0], w_refs[0].shape[1])
    accs = jax.lax.fori_loop(0, steps, accumulate, tuple(jnp.zeros(shape, jnp.float32) for _ in w_refs))
    scales = [ref[...] for ref in scale_refs]  # [block_n] each
    return [acc * (scale[:, None] if swap_ab else scale[None, :]) for acc, scale in zip(accs, scales)]


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
