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
`swiglu_weight_only_matmul` the SwiGLU MLP's gate and up together, writing only silu(gate) * up (`stacked_swiglu_matmul`
the same from one [K, 2, F] weight, `jdlm.fuse_projections`' gate_up). When jdlm's model uses which:
jdlm/kernels/quantized_linear.py.

Float weights in x's dtype (no scale) go through the same kernel, read as they are: at batch 1 on an H100 a cached
step's q|k|v, gate|up + SwiGLU and down matmuls run faster this way than as XLA's GEMMs (`float_tiling`;
jdlm/kernels/float_linear.py says when jdlm uses it).
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
    return f"{power_of_two_rows(m)},{k},{n}"


@functools.cache
def _read_tilings(path: str) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def tuned_tilings() -> dict:
    """{device kind: {tiling_key: Tiling fields}}: the fastest tilings scripts/bench_weight_only_matmul.py measured,
    from the file named by $JDLM_WEIGHT_ONLY_TILINGS, else jdlm/kernels/weight_only_tilings.json; {} without one."""
    return _read_tilings(os.environ.get(TILINGS_ENV) or str(TILINGS_FILE))


def power_of_two_rows(m: int) -> int:
    """m rounded up to a power of two >= 16: the rows a Triton tile (and a tensor-core dot) takes."""
    return max(16, 1 << max(0, m - 1).bit_length())


def model_tiling(m: int, k: int, n: int, num_sms: int | None = None, *, column_multiple: int | None = None,
                 max_splits: int | None = None, weights: int = 1) -> Tiling | None:
    """A tiling for [m, k] @ [k, n] from a bandwidth model, or None when no power-of-two tile >= 16 divides K or N.

    One row block up to 64 rows (x is padded to a power of two >= 16), K tiles of up to 128. The column tile (128
    or 64 where they divide N) and the K splits (divisors of K / block_k) minimise a bandwidth model: the bytes
    moved, the weights plus the float32 partial sums written and read back (2 * splits * rows * N * 4 when
    splits > 1), over the share of the `num_sms` streaming multiprocessors the programs keep busy.
    `column_multiple`: block_n must also divide it (grouped weights: their widths' gcd); `max_splits`: at most this
    many K splits; `weights`: weight tiles each program reads per K step (2 for SwiGLU), for the shared memory."""
    block_m = min(64, power_of_two_rows(m))
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


def float_tiling(m: int, k: int, n: int, num_sms: int | None = None, *, splits: bool = True) -> Tiling | None:
    """A tiling for [m, k] @ [k, n] with float weights (2 bytes a weight), or None when no tile divides K or N.

    The rule measured best on an H100 at M = 32 (`scripts/bench_matmul_forms.py --pallas`, docs/performance.md):
    one row block (up to 64 rows); column tiles of 128 where they give at least half as many programs as the GPU has
    SMs, else of 64 (or the largest power of two that divides N) with K split over 2, 3, ... programs until they do;
    K tiles of 128 when split, else 64 (or smaller where K needs it); 4 warps, 4 pipeline stages. `splits=False`:
    never split K (the SwiGLU kernel)."""
    block_m = min(64, power_of_two_rows(m))
    row_blocks = -(-m // block_m)
    wanted = (num_sms or sm_count()) / 2
    if n % 128 == 0 and row_blocks * n // 128 >= wanted:
        block_n = 128
    else:
        block_n = next((b for b in BLOCKS[1:] if n % b == 0), None)
    split = 1
    if block_n is not None and block_n < 128 and splits and k % 128 == 0:
        programs, steps = row_blocks * n // block_n, k // 128
        split = next((s for s in range(1, steps + 1) if steps % s == 0 and programs * s >= wanted), 1)
    block_k = 128 if split > 1 else next((b for b in BLOCKS[1:] if k % b == 0), None)
    if block_n is None or block_k is None:
        return None
    return Tiling(block_m=block_m, block_n=block_n, block_k=block_k, splits=split, num_warps=4, num_stages=4)


def sm_count() -> int:
    return int(getattr(jax.devices()[0], "core_count", None) or DEFAULT_SMS)


def weight_only_matmul(x: jax.Array, w: jax.Array, scale: jax.Array | None, *, tiling: Tiling | None = None,
                       interpret: bool | None = None, **tiling_fields) -> jax.Array:
    """x @ (w * scale) with the weight converted to x's dtype in the kernel and float32 accumulation.

    Args:
      x: [M, K] float (bfloat16 on GPU; float32 works too).
      w: [K, N] int8 or float8_e4m3fn; or in x's dtype, with no scale (x @ w).
      scale: [N] float32, one per output column; None for a float weight.
      tiling: how to cut the matmul; default `default_tiling(M, K, N)` (`float_tiling` for a float weight), with any
        of Tiling's fields given as keyword arguments (block_n=64, splits=4, ...) replacing its values.
      interpret: run the kernel through Pallas's interpreter (any backend); default: everywhere but on GPU.

    Returns:
      [M, N] in x's dtype.
    """
    _check_operands(x, [w], [scale])
    (m, k), n = x.shape, w.shape[1]
    default = float_tiling(m, k, n) if scale is None else default_tiling(m, k, n)
    tiling = _tiling(tiling, tiling_fields, default, k, n)
    tiling.check(m, k, n)
    return _matmuls(x, [w], [scale], tiling, interpret)[0]


def grouped_weight_only_matmul(x: jax.Array, ws, scales, *, tiling: Tiling | None = None,
                               interpret: bool | None = None, **tiling_fields) -> list[jax.Array]:
    """[x @ (w * scale) for each weight] in one kernel launch: the programs run over every weight's column tiles in
    turn (q, k and v of a layer: one launch instead of three, and a wider grid that needs fewer K splits).

    Args:
      x: [M, K] float; ws: weights [K, N_i] (int8 or float8_e4m3fn; or all in x's dtype, with scales all None);
      scales: [N_i] float32.
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
      x: [M, K] float; gate, up: [K, N] int8 or float8_e4m3fn (or in x's dtype, with both scales None);
      gate_scale, up_scale: [N] float32.
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


def stacked_swiglu_matmul(x: jax.Array, gate_up: jax.Array, scale: jax.Array | None = None, *,
                          tiling: Tiling | None = None, interpret: bool | None = None, **tiling_fields) -> jax.Array:
    """`swiglu_weight_only_matmul` for gate and up stacked in one weight, as `jdlm.fuse_projections` stores them:
    each program reads its column tile of gate and of up from the one array (no copy of either half).

    Args:
      x: [M, K] float; gate_up: [K, 2, F] (gate, then up) int8 or float8_e4m3fn, or in x's dtype;
      scale: [2, F] float32 for a quantised weight, None for a float one.
      tiling: default `float_tiling(M, K, F)` for a float weight, `model_tiling(M, K, F)` without K splits for a
        quantised one; splits must be 1.

    Returns:
      [M, F] in x's dtype.
    """
    if gate_up.ndim != 3 or gate_up.shape[1] != 2:
        raise ValueError(f"gate_up must be [K, 2, F], got {gate_up.shape}")
    k, _, n = gate_up.shape
    if scale is not None and scale.shape != (2, n):
        raise ValueError(f"scale must be [2, F] = (2, {n}) for gate_up {gate_up.shape}, got {scale.shape}")
    stacked = gate_up.reshape(k, 2 * n)  # gate in columns [0, F), up in [F, 2F)
    half = jax.ShapeDtypeStruct((k, n), gate_up.dtype)  # gate's and up's shapes, for the checks
    _check_operands(x, [half, half], [None, None] if scale is None else [scale[0], scale[1]])
    m = x.shape[0]
    default = (float_tiling(m, k, n, splits=False) if scale is None
               else model_tiling(m, k, n, max_splits=1, weights=2))
    tiling = _tiling(tiling, tiling_fields, default, k, n)
    tiling.check(m, k, n)
    if tiling.splits != 1:
        raise ValueError(f"splits={tiling.splits}: the SwiGLU kernel needs each program's whole K sum (splits=1)")
    flat_scale = None if scale is None else scale.reshape(2 * n)
    return _matmuls(x, [stacked, stacked], [flat_scale, flat_scale], tiling, interpret, swiglu=True,
                    widths=(n, n), offsets=(0, n // tiling.block_n))[0]


def _check_operands(x, ws, scales) -> None:
    if len({scale is None for scale in scales}) > 1:
        raise ValueError("give every weight a scale (quantised weights) or none (float weights), not a mix")
    for w, scale in zip(ws, scales, strict=True):
        scale_shape = None if scale is None else scale.shape
        if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0] or scale_shape not in (None, w.shape[1:]):
            raise ValueError(f"want x [M, K], w [K, N], scale [N]; got {x.shape}, {w.shape}, {scale_shape}")
        if scale is None and w.dtype != x.dtype:
            raise ValueError(f"a weight without a scale must have x's dtype {x.dtype}, not {w.dtype}")
        if scale is not None and jnp.dtype(w.dtype) not in WEIGHT_DTYPES:
            raise ValueError(f"a scaled w must be int8 or float8_e4m3fn, not {w.dtype}")


def _tiling(tiling: Tiling | None, fields: dict, default: Tiling | None, k: int, n: int) -> Tiling:
    if tiling is None:
        if default is None:
            raise ValueError(f"no power-of-two tile >= 16 divides K={k} and N={n}; use the XLA einsum")
        tiling = default
    return dataclasses.replace(tiling, **fields)


def _matmuls(x, ws, scales, tiling: Tiling, interpret: bool | None, swiglu: bool = False, widths=None,
             offsets=None) -> list[jax.Array]:
    """Pads x to whole row blocks, runs the kernel, adds up the K splits' partial sums and casts to x's dtype.
    `scales` are all None for float weights; `widths` / `offsets` (in column tiles) read each weight as that many
    columns from that tile on (default: the whole weight)."""
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    m = x.shape[0]
    rows = tiling.padded_rows(m)
    padded = jnp.pad(x, ((0, rows - m), (0, 0))) if rows != m else x
    scales = [s.astype(jnp.float32) for s in scales if s is not None]
    widths = widths or tuple(w.shape[1] for w in ws)
    offsets = offsets or (0,) * len(ws)
    outs = []
    for partials in _call(padded, ws, scales, tiling, interpret, swiglu, widths, offsets):
        if tiling.swap_ab:  # [splits, N, rows] -> [splits, rows, N]
            partials = jnp.swapaxes(partials, 1, 2)
        out = partials[0] if tiling.splits == 1 else partials.sum(axis=0)
        outs.append(out[:m].astype(x.dtype))
    return outs


def _call(x, ws, scales, tiling: Tiling, interpret: bool, swiglu: bool, widths, offsets) -> list[jax.Array]:
    """The pallas_call: per weight, [splits, rows, N_i] partial products (scaled when `scales` are given;
    [splits, N_i, rows] with swap_ab), float32 when they still need adding up, else x's dtype; with `swiglu`, one
    output silu(gate) * up. Weight i is read as its `widths[i]` columns from column tile `offsets[i]` on."""
    rows, k = x.shape
    t = tiling
    span = k // t.splits  # the K rows each program reduces over
    tiles = [width // t.block_n for width in widths]
    # Program column j: with swiglu, tile j of both weights; else tile j - starts[i] of the weight i it falls in.
    starts = [0] * len(ws) if swiglu else [sum(tiles[:i]) for i in range(len(ws))]
    grid = (rows // t.block_m, tiles[0] if swiglu else sum(tiles), t.splits)  # row blocks fastest: they share w
    out_dtype = x.dtype if t.splits == 1 else jnp.float32
    columns = [_column_map(start, size, grid[1], offset) for start, size, offset in zip(starts, tiles, offsets)]
    in_specs = [pl.BlockSpec((t.block_m, span), lambda i, j, s: (i, s))]  # x rows, this split's K range
    in_specs += [pl.BlockSpec((span, t.block_n), _weight_map(c)) for c in columns]  # split's K range, column tile
    in_specs += [pl.BlockSpec((t.block_n,), _scale_map(c)) for c in columns[: len(scales)]]
    outputs = [(width, _column_map(start, size, grid[1], 0)) for width, start, size in zip(widths, starts, tiles)]
    outputs = outputs[: 1 if swiglu else len(ws)]
    if t.swap_ab:
        out_shapes = [jax.ShapeDtypeStruct((t.splits, n, rows), out_dtype) for n, _ in outputs]
        out_specs = [pl.BlockSpec((None, t.block_n, t.block_m), _out_map(c, swap_ab=True)) for _, c in outputs]
    else:
        out_shapes = [jax.ShapeDtypeStruct((t.splits, rows, n), out_dtype) for n, _ in outputs]
        out_specs = [pl.BlockSpec((None, t.block_m, t.block_n), _out_map(c, swap_ab=False)) for _, c in outputs]
    kernel = functools.partial(_kernel, block_k=t.block_k, steps=span // t.block_k, swap_ab=t.swap_ab,
                               starts=tuple(starts), tiles=tuple(tiles), swiglu=swiglu, scaled=bool(scales))
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


def _column_map(start: int, size: int, columns: int, offset: int = 0):
    """A weight's column tile for program column j: j - start, clamped into the weight's `size` tiles (programs
    whose column lies in another weight's range compute an index for it, but never touch that block), plus the
    tile `offset` the weight's columns start at in its array."""
    if start == 0 and size == columns:
        return lambda j: j + offset
    return lambda j: jnp.clip(j - start, 0, size - 1) + offset


def _weight_map(column):
    return lambda i, j, s: (s, column(j))


def _scale_map(column):
    return lambda i, j, s: (column(j),)


def _out_map(column, swap_ab: bool):
    if swap_ab:
        return lambda i, j, s: (s, column(j), i)
    return lambda i, j, s: (s, i, column(j))


def _kernel(x_ref, *refs, block_k: int, steps: int, swap_ab: bool, starts: tuple, tiles: tuple, swiglu: bool,
            scaled: bool):
    """One program: x_ref [block_m, span]; per weight w_ref [span, block_n] and (when `scaled`) scale_ref
    [block_n]; out_refs [block_m, block_n] ([block_n, block_m] with swap_ab)."""
    count = len(tiles)
    scale_count = count if scaled else 0
    w_refs, scale_refs = refs[:count], refs[count:count + scale_count]
    out_refs = refs[count + scale_count:]
    if swiglu:
        gate, up = _tile_products(x_ref, w_refs, scale_refs, block_k, steps, swap_ab)
        out_refs[0][...] = (jax.nn.silu(gate) * up).astype(out_refs[0].dtype)
        return
    j = pl.program_id(1)
    for w_ref, scale_ref, out_ref, start, size in zip(w_refs, scale_refs or [None] * count, out_refs, starts, tiles,
                                                      strict=True):

        def store(w_ref=w_ref, scale_ref=scale_ref, out_ref=out_ref):
            (product,) = _tile_products(x_ref, [w_ref], [] if scale_ref is None else [scale_ref], block_k, steps,
                                        swap_ab)
            out_ref[...] = product.astype(out_ref.dtype)

        if count == 1:
            store()
        else:  # only the programs whose column falls in this weight's tiles
            pl.when((j >= start) & (j < start + size))(store)


def _tile_products(x_ref, w_refs, scale_refs, block_k: int, steps: int, swap_ab: bool) -> list[jax.Array]:
    """Each weight's float32 product tile over this program's K range, from one pass over the x tiles; scaled by
    `scale_refs` where given (quantised weights), as is for float ones (no scale_refs)."""

    def accumulate(i, accs):
        start = pl.multiple_of(i * block_k, block_k)
        x = x_ref[:, pl.ds(start, block_k)]  # [block_m, block_k]
        out = []
        for acc, w_ref in zip(accs, w_refs):
            w = w_ref[pl.ds(start, block_k), :].astype(x.dtype)  # [block_k, block_n], 1 byte a weight if quantised
            if swap_ab:  # [block_n, block_m] = w^T x^T
                out.append(acc + jax.lax.dot_general(w, x, (((0,), (1,)), ((), ())),
                                                     preferred_element_type=jnp.float32))
            else:
                out.append(acc + jax.lax.dot(x, w, preferred_element_type=jnp.float32))
        return tuple(out)

    shape = (w_refs[0].shape[1], x_ref.shape[0]) if swap_ab else (x_ref.shape[0], w_refs[0].shape[1])
    accs = jax.lax.fori_loop(0, steps, accumulate, tuple(jnp.zeros(shape, jnp.float32) for _ in w_refs))
    if not scale_refs:
        return list(accs)
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
