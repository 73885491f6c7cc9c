"""The weight-only matmul kernel (jdlm/kernels/weight_only_matmul.py) against XLA at LLaDA-8B's linear shapes.

For each weight shape (K, N) and row count M (32: a cached decode step's block at batch 1; 256: the kernel's
largest), times [M, K] @ [K, N] as
  bf16: the float einsum on bf16 weights (2 bytes a weight);
  xla: jdlm/model.py's quantised `linear` with the kernel off (XLA fuses the convert into its Triton GEMM);
  kernel: the kernel with the bandwidth model's tiling (`model_tiling`), and over a bounded grid of tilings
    around it (block_m, block_n, block_k, splits, num_warps, num_stages, swap_ab);
and reports each one's time, the rate it reads its weights at (GB/s), and that rate over the device's copy
bandwidth measured in the same run (`jdlm.roofline.measure_floors`: read + write of a 1 GB array). Each timed call
chains distinct weight copies (at least 128 MB in all) and distinct inputs, so no weight is served from the 50 MB L2 and
no call is merged with another; several chains are queued before the clock stops, so dispatch is hidden.

Also writes weight_only_tilings.json: the fastest correct tiling per (M, K, N) on this device. Point
$JDLM_WEIGHT_ONLY_TILINGS at it (e.g. for scripts/bench_quant.py in the same session) or keep it as
jdlm/kernels/weight_only_tilings.json, and `default_tiling` (what jdlm/model.py runs) uses those tilings.

Shapes: q, k, v, o (4096, 4096); gate, up (4096, 12288); down (12288, 4096). Then the fused kernels (the "fused"
mode of jdlm/kernels/quantized_linear.py) against the same work done per weight: a layer's q|k|v (XLA's three
linears, the kernel three times, `grouped_weight_only_matmul` once) and its gate|up with the SwiGLU (XLA's
silu(gate) * up, the kernel twice and the product, `swiglu_weight_only_matmul` once).

    python scripts/bench_weight_only_matmul.py            # one GPU, under 3 minutes; JSON to $OUT
    python scripts/bench_weight_only_matmul.py --quick    # tiny shapes in Pallas's interpreter on CPU, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jdlm import quantize as Q
from jdlm import roofline
from jdlm.kernels import quantized_linear as L
from jdlm.kernels import weight_only_matmul as W
from jdlm.model import linear

FULL_SHAPES = {"qkvo": (4096, 4096), "gate_up": (4096, 12288), "down": (12288, 4096)}
QUICK_SHAPES = {"square": (256, 128), "wide": (128, 512)}
# The fused cases: K and the weights' widths of a layer's q|k|v and of its gate|up (with the SwiGLU).
FULL_FUSED = {"qkv": (4096, (4096, 4096, 4096)), "swiglu": (4096, (12288, 12288))}
QUICK_FUSED = {"qkv": (128, (128, 64, 64)), "swiglu": (128, (256, 256))}
FUSED_VARIANTS = [{"block_n": 32}, {"block_n": 64}, {"block_n": 128}, {"swap_ab": True}, {"num_warps": 8},
                  {"num_stages": 3}]
MAX_DIFF = 0.02  # largest |kernel - XLA| / max |XLA| of a correct kernel (bf16 outputs, other summation order)
CHAIN_BYTES = 128 << 20  # weight bytes one timed call reads, over several copies: 2.5x an H100's 50 MB L2


def variants(m: int, k: int, n: int, num_sms: int, quick: bool) -> list[W.Tiling]:
    """The tilings to time besides the default, a dozen at most: the default's neighbours in every knob."""
    base = W.model_tiling(m, k, n, num_sms)
    out = []

    def add(**fields):
        t = dataclasses.replace(base, **fields)
        if "splits" not in fields:  # refit the splits to the new tiles: the fewest giving ~every SM a program
            t = dataclasses.replace(t, splits=fitted_splits(t, m, k, n, num_sms))
        try:
            t.check(m, k, n)
        except ValueError:
            return
        if t != base and t not in out:
            out.append(t)

    if quick:
        add(block_n=32), add(splits=2, block_k=32), add(swap_ab=True), add(num_stages=2)
        return out
    for block_n in (32, 64, 128, 256):
        add(block_n=block_n)
    add(block_k=64), add(block_k=256)
    add(splits=base.splits * 2), add(splits=max(1, base.splits // 2))
    add(num_warps=8), add(num_stages=3), add(num_stages=6)
    add(swap_ab=True), add(swap_ab=True, block_n=128)
    if m > 64:
        add(block_m=128, num_warps=8), add(block_m=32)
    return out[:12] if m <= 64 else out[:6]  # many rows: the weight-bound case is past, fewer knobs


def fitted_splits(t: W.Tiling, m: int, k: int, n: int, num_sms: int) -> int:
    """The fewest K splits (dividing K / block_k) that give 90% of the SMs a program."""
    steps = max(1, k // t.block_k)
    tiles = t.padded_rows(m) // t.block_m * max(1, n // t.block_n)
    return next((d for d in range(1, steps + 1) if steps % d == 0 and tiles * d >= 0.9 * num_sms), steps)


def chain_timer(fn, xs, ws, scales, calls: int) -> tuple[float, np.ndarray]:
    """Seconds per call of `fn(x, w, scale)`, from one jitted program that calls it on every (xs[i], ws[i]) in turn,
    queued `calls` times before waiting (the median of 3 such runs); and the first call's output (float32)."""
    program = jax.jit(lambda xs, ws, scales: tuple(fn(x, w, s) for x, w, s in zip(xs, ws, scales)))
    first = np.concatenate([np.asarray(a, np.float32).ravel()  # compile, warm up
                            for a in jax.tree.leaves(program(xs, ws, scales)[0])])
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        outs = [program(xs, ws, scales) for _ in range(calls)]
        jax.block_until_ready(outs)
        times.append((time.perf_counter() - t0) / (calls * len(xs)))
    return float(np.median(times)), first


def measure(name: str, fn, operands, weight_bytes: int, copy_gbps: float, calls: int, reference=None,
            **extra) -> tuple[dict, np.ndarray]:
    """The timing record of `fn` and its first output; with `reference` (XLA's output), the largest difference
    from it relative to its largest magnitude (a check that the compiled kernel computes the right thing)."""
    seconds, first = chain_timer(fn, *operands, calls=calls)
    gbps = weight_bytes / seconds / 1e9
    record = {"name": name, "us": round(seconds * 1e6, 2), "weight_GBps": round(gbps, 1),
              "of_copy_bandwidth": round(gbps / copy_gbps, 3), **extra}
    if reference is not None:
        record["max_diff_vs_xla"] = float(np.abs(first - reference).max() / np.abs(reference).max())
    return record, first


@dataclasses.dataclass
class Bench:
    mode: str
    dtype: jnp.dtype
    interpret: bool
    num_sms: int
    calls: int
    copy_gbps: float
    deadline: float
    quick: bool

    def case(self, shape_name: str, m: int, k: int, n: int) -> dict:
        """Times bf16, XLA's quantised linear and the kernel's tilings on [m, k] @ [k, n]."""
        t0 = time.perf_counter()
        copies = 2 if self.quick else max(2, -(-CHAIN_BYTES // (k * n)))
        keys = jax.random.split(jax.random.fold_in(jax.random.key(0), k * n + m), 2 * copies)
        w16 = [(0.02 * jax.random.normal(keys[i], (k, n), jnp.float32)).astype(self.dtype) for i in range(copies)]
        xs = [jax.random.normal(keys[copies + i], (m, k), jnp.float32).astype(self.dtype) for i in range(copies)]
        quantized = [Q.quantize_array(w, self.mode, 1) for w in w16]
        wq, scales = [q for q, _ in quantized], [s for _, s in quantized]
        case = {"shape": shape_name, "K": k, "N": n, "M": m, "weight_copies": copies, "results": []}
        self.run(case, "bf16", lambda x, w, s: x @ w, (xs, w16, [None] * copies), 2 * k * n)
        del w16
        with L.use_kernel("off"):
            xla, reference = self.run(case, "xla", xla_linear, (xs, wq, scales), k * n)
        for i, tiling in enumerate([W.model_tiling(m, k, n, self.num_sms),
                                    *variants(m, k, n, self.num_sms, self.quick)]):
            self.run(case, "kernel" if i == 0 else "kernel_variant", functools.partial(
                W.weight_only_matmul, tiling=tiling, interpret=self.interpret), (xs, wq, scales), k * n, reference,
                tiling=dataclasses.asdict(tiling))
        summarize(case, xla, time.perf_counter() - t0)
        return case

    def fused_case(self, kind: str, m: int, k: int, widths: tuple[int, ...]) -> dict:
        """Times a layer's q|k|v ("qkv") or gate|up with the SwiGLU ("swiglu") at m rows: XLA's quantised linears,
        the kernel once per weight, and the fused kernel over a few tilings."""
        t0 = time.perf_counter()
        total = k * sum(widths)
        copies = 2 if self.quick else max(2, -(-CHAIN_BYTES // total))
        key = jax.random.fold_in(jax.random.key(1), total + m)
        xs = [jax.random.normal(jax.random.fold_in(key, c), (m, k), jnp.float32).astype(self.dtype)
              for c in range(copies)]
        sets = [[Q.quantize_array(0.02 * jax.random.normal(jax.random.fold_in(key, 100 * c + i + 1), (k, n)),
                                  self.mode, 1) for i, n in enumerate(widths)] for c in range(copies)]
        ws, scales = [tuple(w for w, _ in one) for one in sets], [tuple(s for _, s in one) for one in sets]
        case = {"shape": kind, "K": k, "N": sum(widths), "widths": list(widths), "M": m, "weight_copies": copies,
                "results": []}
        kernel = functools.partial(W.weight_only_matmul, interpret=self.interpret)
        if kind == "qkv":
            def xla(x, ws, ss):
                return tuple(xla_linear(x, w, s) for w, s in zip(ws, ss))

            def per_weight(x, ws, ss):
                return tuple(kernel(x, w, s) for w, s in zip(ws, ss))

            def fused(tiling):
                return lambda x, ws, ss: tuple(W.grouped_weight_only_matmul(x, ws, ss, tiling=tiling,
                                                                            interpret=self.interpret))
            base = W.model_tiling(m, k, sum(widths), self.num_sms, column_multiple=math.gcd(*widths))
        else:
            def xla(x, ws, ss):
                return jax.nn.silu(xla_linear(x, ws[0], ss[0])) * xla_linear(x, ws[1], ss[1])

            def per_weight(x, ws, ss):
                return jax.nn.silu(kernel(x, ws[0], ss[0])) * kernel(x, ws[1], ss[1])

            def fused(tiling):
                return lambda x, ws, ss: W.swiglu_weight_only_matmul(x, *ws, *ss, tiling=tiling,
                                                                     interpret=self.interpret)
            base = W.model_tiling(m, k, widths[0], self.num_sms, max_splits=1, weights=2)
        with L.use_kernel("off"):
            xla_record, reference = self.run(case, "xla", xla, (xs, ws, scales), total)
        self.run(case, "kernel_per_weight", per_weight, (xs, ws, scales), total, reference)
        tilings = [base] + [t for t in (dataclasses.replace(base, **f) for f in FUSED_VARIANTS) if t != base]
        for i, tiling in enumerate(tilings):
            if kind == "qkv" and tiling.block_n != base.block_n:
                tiling = dataclasses.replace(tiling, splits=fitted_splits(tiling, m, k, sum(widths), self.num_sms))
            if any(n % tiling.block_n for n in widths) or k % (tiling.block_k * tiling.splits):
                continue
            self.run(case, "fused" if i == 0 else "fused_variant", fused(tiling), (xs, ws, scales), total, reference,
                     tiling=dataclasses.asdict(tiling))
        summarize(case, xla_record, time.perf_counter() - t0)
        return case

    def run(self, case: dict, name: str, fn, operands, weight_bytes: int, reference=None, **extra):
        """Times `fn` into `case["results"]` (or records why not); returns its record and first output."""
        if time.perf_counter() > self.deadline:
            case["results"].append({"name": name, "skipped": "time budget", **extra})
            return {}, None
        try:
            record, first = measure(name, fn, operands, weight_bytes, self.copy_gbps, self.calls, reference, **extra)
        except Exception as e:  # noqa: BLE001  (a tiling Triton cannot compile: record it, time the others)
            record, first = {"name": name, "error": f"{type(e).__name__}: {str(e)[:300]}", **extra}, None
        case["results"].append(record)
        return record, first


def xla_linear(x, w, scale):
    """jdlm/model.py's quantised linear on [M, K] @ [K, N] (XLA's path while the kernel is off)."""
    return linear("MK,KN->MN", x, {"w": w, "w_scale": scale}, "w")


def summarize(case: dict, xla: dict, seconds: float) -> None:
    """The case's fastest kernel tiling among those that agree with XLA (within bf16 rounding), and a line."""
    timed = [r for r in case["results"] if r["name"].startswith(("kernel", "fused")) and "us" in r]
    for r in timed:
        r["agrees"] = r["max_diff_vs_xla"] < MAX_DIFF if "max_diff_vs_xla" in r else None
    good = [r for r in timed if r["agrees"] is not False and "tiling" in r]
    if not good:
        return
    best = case["best"] = min(good, key=lambda r: r["us"])
    case["best_over_xla"] = round(xla["us"] / best["us"], 3) if "us" in xla else None
    others = ", ".join(f"{r['name']} {r.get('us')} us ({r.get('weight_GBps')} GB/s)" for r in case["results"]
                       if r["name"] in ("bf16", "xla", "kernel", "kernel_per_weight", "fused"))
    print(f"M={case['M']:4d} {case['shape']:>8} (K={case['K']}, N={case['N']}): {others}; best {best['name']} "
          f"{best['us']} us ({best['weight_GBps']} GB/s, {best['of_copy_bandwidth']:.0%} of copy) {best['tiling']}  "
          f"[{seconds:.0f} s]", file=sys.stderr, flush=True)


def write(report: dict, out_dir: Path, start: float) -> Path:
    report["wall_s"] = round(time.perf_counter() - start, 1)
    path = out_dir / "bench_weight_only_matmul.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes in Pallas's interpreter (CPU smoke run)")
    p.add_argument("--mode", default="int8", choices=sorted(Q.MODES), help="weight quantisation (default int8)")
    p.add_argument("--rows", default=None, help="comma-separated M values (default 32,256; 4,20 with --quick)")
    p.add_argument("--budget-s", type=float, default=150.0,
                   help="time no more programs after this many seconds (default 150; the rest are listed as skipped)")
    p.add_argument("--out", default=None, help="output folder (default $OUT, else .)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    out_dir = Path(args.out or os.environ.get("OUT") or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    rows = [int(r) for r in (args.rows or ("4,20" if args.quick else "32,256")).split(",")]
    dtype = jnp.float32 if args.quick and jax.default_backend() == "cpu" else jnp.bfloat16
    interpret = jax.default_backend() != "gpu"
    num_sms = W.sm_count()
    calls = 1 if args.quick else 20
    floors = roofline.measure_floors(dtype, quick=args.quick)
    report = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
              "mode": args.mode, "compute_dtype": jnp.dtype(dtype).name, "sms": num_sms, "interpret": interpret,
              "copy_GBps": round(floors.copy_gbps, 1), "cases": [], "not_run": []}
    print(f"{report['device']}: copy {floors.copy_gbps:.0f} GB/s, {num_sms} SMs, jax {jax.__version__}",
          file=sys.stderr, flush=True)
    bench = Bench(mode=args.mode, dtype=dtype, interpret=interpret, num_sms=num_sms, calls=calls,
                  copy_gbps=floors.copy_gbps, deadline=start + args.budget_s, quick=args.quick)
    fused = QUICK_FUSED if args.quick else FULL_FUSED
    for m in rows:
        cases = [(name, functools.partial(bench.case, name, m, k, n)) for name, (k, n) in shapes.items()]
        cases += [(kind, functools.partial(bench.fused_case, kind, m, k, widths)) for kind, (k, widths) in fused.items()]
        for name, case in cases:
            if time.perf_counter() > bench.deadline:
                report["not_run"].append({"shape": name, "M": m})
                continue
            report["cases"].append(case())
            write(report, out_dir, start)  # after every case: a run cut short keeps what it measured
    path = write(report, out_dir, start)
    tilings = {report["device"]: {W.tiling_key(c["M"], c["K"], c["N"]): c["best"]["tiling"]
                                  for c in report["cases"] if "best" in c and "widths" not in c}}
    (out_dir / "weight_only_tilings.json").write_text(json.dumps(tilings, indent=1) + "\n")
    print(f"wrote {path} ({report['wall_s']} s) and weight_only_tilings.json (for ${W.TILINGS_ENV}, or to keep as "
          f"{W.TILINGS_FILE.relative_to(Path(W.__file__).parents[2])})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
