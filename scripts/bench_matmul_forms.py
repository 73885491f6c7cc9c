"""Which form of a cached decode step's matmuls reads its weights fastest, at LLaDA-8B's linear shapes (issue 21).

A cached step at batch B runs M = 32 x B rows through every linear layer; at small M each matmul's time is its
weight read. For each weight shape (K, N), this times [M, K] @ [K, N] in several forms and reports the rate it reads
its weights at (GB/s) and that rate over the copy bandwidth measured in the same run:
  bf16:          the float matmul (2 bytes a weight);
  int8_xla:      jdlm's weight-only int8 `linear` (the convert fused into XLA's GEMM); `int8_xla_nk` and
                 `fp8_xla_nk`: the same with the weight stored transposed, [N, K];
  w8a8_int8:     the rows quantised to int8 on the fly (one scale per row), an int8 x int8 -> int32 matmul, both
                 scales applied to the output; the weight stored [K, N] and, as `_nk`, transposed [N, K];
  w8a8_fp8:      the same with float8_e4m3fn operands and float32 accumulation;
  bf16_splitkS:  the float matmul with K cut into S ranges, one batched GEMM whose float32 partial sums are added
                 (more thread blocks for a GEMM with few output tiles, such as down at M = 256);
  pallas_T:      the float matmul through jdlm's Pallas (Triton) matmul kernel at tiling T, given with --pallas as
                 "block_m,block_n,block_k,splits,warps,stages" (block_m capped at M's power of two), checked
                 against bf16's output; `pallas_int8_T` the same kernel on the int8 weight and its scale, checked
                 against int8_xla's;
  pairs_T:       int8 weights stored as int16 words (word c of a row: column c in its low byte, c + N/2 in its
                 high byte), each byte made an exact float16 by integer ops in a Pallas kernel (no convert
                 instruction), x in float16; tiling T as --pallas gives it (block_m unused: one block of all rows);
  int8x8_T:      the rows quantised to int8 outside, int8 x int8 -> int32 tensor-core dots in a Pallas kernel.
The widths compare one weight per projection with the fused layouts: q (4096) against q|k|v (12288), gate (12288)
against gate|up (24576). Each timed call chains distinct weight copies (at least 160 MB in all, past the 50 MB L2) and
queues several calls before the clock stops (scripts/bench_weight_only_matmul.py's timer).

    python scripts/bench_matmul_forms.py             # one GPU, about a minute; JSON to $OUT (--dream: Dream-7B)
    python scripts/bench_matmul_forms.py --quick     # small shapes on CPU, seconds
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from jdlm import quantize as Q
from jdlm import roofline
from jdlm.kernels import weight_only_matmul as wom
from jdlm.kernels.int8_swiglu import paired_products
from jdlm.model import linear
from jdlm.quantize import pair_bytes

sys.path.insert(0, str(Path(__file__).parent))
from bench_weight_only_matmul import chain_timer  # noqa: E402

FULL_SHAPES = {"q": (4096, 4096), "k|v": (4096, 8192), "q|k|v": (4096, 12288), "gate": (4096, 12288),
               "gate|up": (4096, 24576), "down": (12288, 4096)}
DREAM_SHAPES = {"q": (3584, 3584), "q|k|v": (3584, 4608), "gate": (3584, 18944), "gate|up": (3584, 37888),
                "down": (18944, 3584)}  # Dream-7B's (--dream)
QUICK_SHAPES = {"q": (128, 128), "q|k|v": (128, 384)}
CHAIN_BYTES = 160 << 20


def int8_rows(x):
    """x [M, K] -> (int8 [M, K], float32 [M, 1]): per-row symmetric quantisation."""
    scale = jnp.maximum(jnp.abs(x).max(-1, keepdims=True).astype(jnp.float32), 1e-8) / 127
    return jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8), scale


def fp8_rows(x):
    scale = jnp.maximum(jnp.abs(x).max(-1, keepdims=True).astype(jnp.float32), 1e-8) / 448
    return (x / scale).astype(jnp.float8_e4m3fn), scale


def pair_words(w_q):
    """int8 [K, N] -> int16 [K, N/2]: element c holds column c in its low byte and column c + N/2 in its high byte
    (the layout of jdlm/kernels/int8_swiglu.py, whose gate and up are here the two halves of one weight)."""
    n = w_q.shape[1]
    return pair_bytes(w_q[:, : n // 2], w_q[:, n // 2:])


def _int8x8_kernel(x_ref, xs_ref, w_ref, s_ref, out_ref, *, block_k, steps):
    def accumulate(i, acc):
        start = pl.multiple_of(i * block_k, block_k)
        return acc + jax.lax.dot(x_ref[:, pl.ds(start, block_k)], w_ref[pl.ds(start, block_k), :],
                                 preferred_element_type=jnp.int32)

    acc = jax.lax.fori_loop(0, steps, accumulate, jnp.zeros((x_ref.shape[0], w_ref.shape[1]), jnp.int32))
    out_ref[...] = acc.astype(jnp.float32) * xs_ref[...] * s_ref[...][None, :]


def int8_kernel_form(spec: str, interpret: bool, pairs: bool):
    """The `pairs_T` / `int8x8_T` forms (module docstring) at tiling `spec`: their weight preparation and matmul."""
    _, block_n, block_k, splits, warps, stages = (int(v) for v in spec.split(","))
    params = None if interpret else wom.triton_params(warps, stages)

    def prepare(w):
        w_q, scale = Q.quantize_array(w, "int8", input_axes=1)
        n = w_q.shape[1]
        return (pair_words(w_q), jnp.stack([scale[: n // 2], scale[n // 2:]])) if pairs else (w_q, scale)

    def fn(x, w, s):
        if pairs:
            low, high = paired_products(x, w, block_n=block_n, block_k=block_k, splits=splits, num_warps=warps,
                                        num_stages=stages, interpret=interpret)
            return jnp.concatenate([low * s[0], high * s[1]], axis=-1).astype(x.dtype)
        m, span = x.shape[0], x.shape[1] // splits
        out = pl.pallas_call(
            functools.partial(_int8x8_kernel, block_k=block_k, steps=span // block_k),
            out_shape=jax.ShapeDtypeStruct((splits, m, w.shape[1]), jnp.float32),
            grid=(w.shape[1] // block_n, splits),
            in_specs=[pl.BlockSpec((m, span), lambda j, p: (0, p)), pl.BlockSpec((m, 1), lambda j, p: (0, 0)),
                      pl.BlockSpec((span, block_n), lambda j, p: (p, j)),
                      pl.BlockSpec((block_n,), lambda j, p: (j,))],
            out_specs=pl.BlockSpec((None, m, block_n), lambda j, p: (p, 0, j)), compiler_params=params,
            interpret=interpret,
        )(*int8_rows(x), w, s)
        return out.sum(0).astype(x.dtype)
    return prepare, fn


def pallas_form(spec: str, interpret: bool, scaled: bool = False):
    """The matmul through the weight-only kernel's Pallas program at tiling `spec`
    ("block_m,block_n,block_k,splits,warps,stages"; block_m capped at M rounded up to a power of two >= 16);
    `scaled`: a quantised weight with its scale, else a float one."""
    block_m, block_n, block_k, splits, warps, stages = (int(v) for v in spec.split(","))

    def fn(x, w, s):  # s: the int8 weight's scale; for bf16 a unit scale, not passed (float weights have none)
        tiling = wom.Tiling(block_m=min(block_m, wom.power_of_two_rows(x.shape[0])), block_n=block_n,
                            block_k=block_k, splits=splits, num_warps=warps, num_stages=stages)
        return wom.weight_only_matmul(x, w, s if scaled else None, tiling=tiling, interpret=interpret)
    return fn


def forms(dtype, pallas=()):
    """name -> (prepare(w [K, N] float) -> (w', scale [N]), matmul(x, w', scale) -> [M, N])."""
    def bf16(x, w, s):
        return x @ w

    def int8_xla(x, w, s):
        return linear("MK,KN->MN", x, {"w": w, "w_scale": s}, "w")

    def w8a8(quantise, acc, nk):
        def fn(x, w, s):
            xq, xs = quantise(x)
            dims = (((1,), (1,)), ((), ())) if nk else (((1,), (0,)), ((), ()))
            y = jax.lax.dot_general(xq, w, dims, preferred_element_type=acc)
            return (y.astype(jnp.float32) * xs * s).astype(x.dtype)
        return fn

    def quant(mode, nk=False):
        def prep(w):
            q, s = Q.quantize_array(w, mode, input_axes=1)
            return (q.T if nk else q), s
        return prep

    def weight_only_nk(x, w, s):  # w [N, K]: the weight's rows are its output channels, K contiguous
        y = jax.lax.dot_general(x, w.astype(x.dtype), (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        return (y * s).astype(x.dtype)

    def split_k(splits):  # K cut into `splits` ranges run as one batched GEMM, the float32 partial sums added
        def fn(x, w, s):
            (m, k), n = x.shape, w.shape[1]
            parts = jnp.einsum("MSK,SKN->SMN", x.reshape(m, splits, k // splits), w.reshape(splits, k // splits, n),
                               preferred_element_type=jnp.float32)
            return parts.sum(0).astype(x.dtype)
        return fn

    plain = (lambda w: (w.astype(dtype), jnp.ones((w.shape[1],), jnp.float32)), bf16)
    return {"bf16": plain,
            **{f"bf16_splitk{s}": (plain[0], split_k(s)) for s in (2, 3, 4)},
            "int8_xla": (quant("int8"), int8_xla),
            "int8_xla_nk": (quant("int8", True), weight_only_nk),
            "fp8_xla_nk": (quant("fp8", True), weight_only_nk),
            "w8a8_int8": (quant("int8"), w8a8(int8_rows, jnp.int32, False)),
            "w8a8_int8_nk": (quant("int8", True), w8a8(int8_rows, jnp.int32, True)),
            "w8a8_fp8": (quant("fp8"), w8a8(fp8_rows, jnp.float32, False)),
            "w8a8_fp8_nk": (quant("fp8", True), w8a8(fp8_rows, jnp.float32, True)),
            **{"pallas_" + spec.replace(",", "_"): (plain[0], pallas_form(spec, jax.default_backend() != "gpu"))
               for spec in pallas},
            **{"pallas_int8_" + spec.replace(",", "_"): (quant("int8"),
                                                          pallas_form(spec, jax.default_backend() != "gpu", True))
               for spec in pallas},
            **{f"{kind}_" + spec.replace(",", "_"): int8_kernel_form(spec, jax.default_backend() != "gpu",
                                                                     kind == "pairs")
               for spec in pallas for kind in ("pairs", "int8x8")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes (a CPU smoke run)")
    p.add_argument("--rows", default="32,256", help="comma-separated M values (default 32,256)")
    p.add_argument("--forms", default=None, help="comma-separated forms (default all)")
    p.add_argument("--shapes", default=None, help="comma-separated shape names (default all)")
    p.add_argument("--dream", action="store_true", help="Dream-7B's linear shapes instead of LLaDA-8B's")
    p.add_argument("--pallas", action="append", default=[],
                   help="a Pallas tiling to time as a form: block_m,block_n,block_k,splits,warps,stages (repeatable)")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="output folder (default $OUT or .)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    dtype = jnp.float32 if args.quick else jnp.bfloat16
    floors = roofline.measure_floors(dtype, quick=args.quick)
    report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "copy_GBps": round(floors.copy_gbps, 1),
              "results": []}
    print(f"{report['device']}: copy {floors.copy_gbps:.0f} GB/s", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(0)
    shapes = QUICK_SHAPES if args.quick else DREAM_SHAPES if args.dream else FULL_SHAPES
    for name, (k, n) in ((n, shapes[n]) for n in (args.shapes.split(",") if args.shapes else shapes)):
        base = jax.random.normal(key, (k, n), jnp.float32) * 0.02
        reference = {}  # (form, M) -> bf16's and int8_xla's first outputs, to check the Pallas forms against
        for form, (prepare, fn) in forms(dtype, args.pallas).items():
            if args.forms and form not in args.forms.split(","):
                continue
            try:
                w, s = prepare(base)
                copies = 2 if args.quick else max(2, -(-CHAIN_BYTES // w.nbytes))
                ws = [w + 0 if i else w for i in range(copies)]  # distinct buffers
                for m in (int(r) for r in args.rows.split(",")):
                    xs = [jax.random.normal(jax.random.key(i + 1), (m, k), dtype) for i in range(copies)]
                    seconds, first = chain_timer(fn, xs, ws, [s] * copies, calls=2 if args.quick else 20)
                    gbps = w.nbytes / seconds / 1e9
                    row = {"shape": name, "K": k, "N": n, "M": m, "form": form, "us": round(seconds * 1e6, 2),
                           "weight_GBps": round(gbps, 1), "of_copy": round(gbps / floors.copy_gbps, 3)}
                    if form in ("bf16", "int8_xla"):
                        reference[form, m] = first
                    against = "int8_xla" if form.startswith(("pallas_int8", "pairs", "int8x8")) else "bf16"
                    if form.startswith(("pallas_", "pairs", "int8x8")) and (against, m) in reference:
                        expected = reference[against, m]
                        row[f"max_diff_vs_{against}"] = float(np.abs(first - expected).max() / np.abs(expected).max())
                    report["results"].append(row)
                    print(f"M={m:4d} {name:>8} {form:>13}: {row['us']:8.2f} us {row['weight_GBps']:7.1f} GB/s "
                          f"({row['of_copy']:.0%})", file=sys.stderr, flush=True)
            except Exception as e:  # noqa: BLE001  (a form this backend cannot compile: record it, time the others)
                report["results"].append({"shape": name, "form": form, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                print(f"{name} {form}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr, flush=True)
            (out / "matmul_forms.json").write_text(json.dumps(report, indent=1) + "\n")
    report["wall_s"] = round(time.perf_counter() - start, 1)
    (out / "matmul_forms.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
