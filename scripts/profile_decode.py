"""Where a decode's device time goes, read from a jax.profiler trace: kernels by kind and by name, per forward,
and how long the device sat idle between them.

Random weights of MODEL (`jdlm.bench.random_params`), low confidence one token per step with the dual cache (the
target strategy of issue 21: prompt 256, 256 new tokens in blocks of 32, so 8 full forwards and 248 cached
steps), B rows. The decode is compiled and run once, then run again under
`jax.profiler.trace(create_perfetto_trace=True)`. From the trace's device streams:
  busy       the union of the kernels' intervals; `span` is first kernel start to last kernel end, and
             `idle = span - busy` is time the device waited (launch gaps, host work, synchronisation)
  kinds      kernel time summed by kind: gemm (cuBLAS / cuBLASLt / CUTLASS), attention (cuDNN, flash, jdlm's
             window kernel), fusion (XLA's generated elementwise and reduction kernels), copy (memcpy, memset),
             other; each with its kernel count, both also per forward
  kernels    the 30 kernels with the most total time
Writes profile_<model>_b<B>_<kernel mode>[_fused][_<quantize>].json under $OUT (or --out) and prints a summary line.

    python scripts/profile_decode.py                        # one GPU: llada-8b, B = 1, the kernel off
    python scripts/profile_decode.py --batch 8 --kernel on  # B = 8 with the window attention kernel
    python scripts/profile_decode.py --fuse --quantize int8  # int8 weights, fused projections (the CLI's GPU layout)
    python scripts/profile_decode.py --quick                # CPU smoke run: tiny shapes (the trace's host only)
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jdlm import bench, decode
from jdlm import strategies as S
from jdlm.kernels import window_attention
from jdlm.model import fuse_projections
from jdlm.quantize import quantize_params

KINDS = {  # the first kind whose any marker is in a kernel's lower-cased name
    "copy": ("memcpy", "memset"),
    "attention": ("cudnn", "flash", "fmha", "window", "attention", "sdpa"),
    "gemm": ("gemm", "cublas", "cutlass", "nvjet", "xmma", "matmul", "dot"),
    "fusion": ("fusion", "loop_", "input_", "wrapped", "triton", "reduce", "convert", "transpose", "concatenate",
               "dynamic", "slice", "scatter", "gather", "select", "broadcast", "add", "multiply"),
}


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, markers in KINDS.items() if any(m in low for m in markers)), "other")


def device_events(trace: dict) -> list[dict]:
    """The trace's complete events ("ph" X) on a device's kernel streams: processes named for a GPU or TPU, and
    of their threads the "Stream" ones when there are any (other threads repeat the same time as XLA ops)."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    process, thread = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            process[e["pid"]] = str(e.get("args", {}).get("name", ""))
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            thread[(e["pid"], e.get("tid"))] = str(e.get("args", {}).get("name", ""))
    devices = {pid for pid, name in process.items() if "GPU" in name or "TPU" in name or "/device:" in name}
    spans = [e for e in events if e.get("ph") == "X" and e.get("pid") in devices and "dur" in e]
    streams = [e for e in spans if thread.get((e["pid"], e.get("tid")), "").startswith("Stream")]
    return streams or spans


def busy_time(events: list[dict]) -> float:
    """Microseconds covered by at least one event (the union of their intervals)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def summarise(events: list[dict], forwards: int) -> dict:
    """Totals in milliseconds, per decode and per forward (see the module docstring)."""
    if not events:
        return {"device_kernels": 0}
    start = min(float(e["ts"]) for e in events)
    stop = max(float(e["ts"]) + float(e["dur"]) for e in events)
    busy = busy_time(events)
    by_kind, by_name = collections.defaultdict(lambda: [0, 0.0]), collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        for table, key in ((by_kind, kind_of(e["name"])), (by_name, e["name"])):
            table[key][0] += 1
            table[key][1] += float(e["dur"])
    kinds = {k: {"kernels": n, "ms": round(us / 1e3, 3), "kernels_per_forward": round(n / forwards, 2),
                 "ms_per_forward": round(us / 1e3 / forwards, 4)} for k, (n, us) in sorted(by_kind.items())}
    top = sorted(by_name.items(), key=lambda item: -item[1][1])[:30]
    return {"device_kernels": len(events), "kernels_per_forward": round(len(events) / forwards, 2),
            "span_ms": round((stop - start) / 1e3, 3), "busy_ms": round(busy / 1e3, 3),
            "idle_ms": round((stop - start - busy) / 1e3, 3), "idle_share": round(1 - busy / (stop - start), 4),
            "kinds": kinds,
            "kernels": [{"name": name[:200], "kind": kind_of(name), "count": n, "ms": round(us / 1e3, 3),
                         "us_each": round(us / n, 2)} for name, (n, us) in top]}


def read_trace(log_dir: Path) -> dict:
    """The perfetto trace jax.profiler wrote under log_dir."""
    found = sorted(log_dir.rglob("*perfetto_trace.json.gz")) or sorted(log_dir.rglob("*.trace.json.gz"))
    if not found:
        raise SystemExit(f"no trace written under {log_dir}")
    with gzip.open(found[-1], "rt") as f:
        return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the small test model on a CPU")
    p.add_argument("--model", default=None, help="random shapes: llada-8b (default), dream-7b")
    p.add_argument("--batch", type=int, default=1, help="rows (default 1)")
    p.add_argument("--kernel", default="off", choices=("off", "on", "auto"), help="window attention kernel mode")
    p.add_argument("--fuse", action="store_true", help="fused projections (jdlm.fuse_projections), as the CLI on a GPU")
    p.add_argument("--quantize", default=None, choices=("int8", "fp8"), help="weight-only quantisation (before fusing)")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    model = args.model or ("test" if args.quick else "llada-8b")
    dtype = jnp.float32 if args.quick else jnp.bfloat16
    prompt_len, G, W = (16, 16, 8) if args.quick else (256, 256, 32)
    window_attention.set_mode(args.kernel)
    params = quantize_params(bench.random_params(model, dtype), args.quantize)
    if args.fuse:
        params = fuse_projections(params, free_inputs=True)
    strategy = S.Strategy(schedule=S.Schedule(gen_length=G, block_length=W, steps=G), rule=S.LowConfidence(),
                          cache=S.DualCache())
    prompt = bench.random_prompt(params.config, args.batch, prompt_len)
    jax.block_until_ready(decode(params, prompt, strategy).tokens)  # compile and warm up
    with tempfile.TemporaryDirectory() as log_dir:
        t0 = time.perf_counter()
        with jax.profiler.trace(log_dir, create_perfetto_trace=True):
            result = decode(params, prompt, strategy)
            jax.block_until_ready(result.tokens)
        traced_s = time.perf_counter() - t0
        trace = read_trace(Path(log_dir))
    forwards, full = int(result.forwards), int(result.full_forwards)
    summary = {"model": model, "batch": args.batch, "kernel": args.kernel, "fused_projections": args.fuse,
               "quantize": args.quantize,
               "dtype": jnp.dtype(dtype).name,
               "device": jax.devices()[0].device_kind, "prompt_len": prompt_len, "gen_length": G,
               "block_length": W, "forwards": forwards, "full_forwards": full, "traced_wall_s": round(traced_s, 3),
               **summarise(device_events(trace), forwards)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ("_fused" if args.fuse else "") + (f"_{args.quantize}" if args.quantize else "")
    path = out / f"profile_{model}_b{args.batch}_{args.kernel}{suffix}.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("kinds", "kernels")}), flush=True)
    for kind, row in summary.get("kinds", {}).items():
        print(f"  {kind:10s} {row['kernels_per_forward']:8.1f} kernels/forward {row['ms_per_forward']:8.4f} ms/forward")


if __name__ == "__main__":
    main()
