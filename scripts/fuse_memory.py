"""Device memory while the CLI fuses projections (`jdlm.fuse_projections(params, free_inputs=True)`, its default on
one GPU): does fusing fit where the weights nearly fill the card?

Fusing frees each layer's q, k, v, gate, up once its qkv and gate_up exist, but the freed buffers lie between the
layer's kept ones (o, down, the norms), and gate_up (2 x gate) is larger than any of those holes, so the allocator
may need fresh memory for every layer instead of one layer's worth. This creates random LLaDA-8B weights (bf16, or
--quantize int8) on one GPU, fuses them, and records the allocator's statistics (bytes in use, peak, pool, largest
free block) after each; then, in child processes with JAX's pool capped at the weights plus each --headroom-gb,
whether fusing completes or runs out of memory.

    python scripts/fuse_memory.py                  # one GPU, about a minute; JSON to $OUT
    python scripts/fuse_memory.py --quick          # tiny weights on CPU (no allocator statistics, no caps)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STATS = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit", "pool_bytes", "bytes_reserved",
         "largest_free_block_bytes", "largest_alloc_size")


def stats(jax) -> dict | None:
    """The default device's allocator statistics we report, or None (a CPU)."""
    raw = jax.devices()[0].memory_stats()
    return None if raw is None else {name: int(raw[name]) for name in STATS if name in raw}


def fuse_once(model: str, quantize: str | None) -> dict:
    """Creates the weights, fuses them freeing the inputs, and reports the statistics and whether it fit."""
    import jax
    import jax.numpy as jnp

    from jdlm import bench
    from jdlm.model import fuse_projections
    from jdlm.quantize import quantize_params, weight_bytes

    dtype = jnp.float32 if model == "test" else jnp.bfloat16
    params = quantize_params(bench.random_params(model, dtype), quantize)
    jax.block_until_ready(params.weights)
    out = {"weight_bytes": weight_bytes(params.weights), "after_weights": stats(jax)}
    t0 = time.perf_counter()
    try:
        params = fuse_projections(params, free_inputs=True)
        jax.block_until_ready(params.weights)
        out["fused"] = True
    except Exception as e:  # noqa: BLE001  (running out of memory is the finding)
        out["fused"] = False
        out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    out["fuse_s"] = round(time.perf_counter() - t0, 2)
    out["after_fusing"] = stats(jax)
    return out


def total_device_bytes() -> int | None:
    """The GPU's memory from nvidia-smi (before JAX starts, which is when the pool's cap must be set), or None."""
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, check=True).stdout
        return int(text.split()[0]) << 20
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def child_run(args, env: dict) -> dict:
    """`fuse_once` in a fresh process with `env` added: its JSON, or the error that ended it."""
    command = [sys.executable, __file__, "--child"] + (["--quick"] if args.quick else []) + \
        (["--quantize", args.quantize] if args.quantize else [])
    done = subprocess.run(command, check=False, env={**os.environ, **env}, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {"fused": False, "error": done.stderr[-800:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny weights on CPU")
    p.add_argument("--quantize", default=None, choices=["int8", "fp8"])
    p.add_argument("--headroom-gb", default="1,2,4", help="comma-separated caps above the weights (default 1,2,4)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)
    model = "test" if args.quick else "llada-8b"
    if args.child:  # one run: its result as JSON on stdout
        print(json.dumps(fuse_once(model, args.quantize)))
        return 0
    # Every run in a process of its own: JAX keeps its pool for the life of a process.
    report = {"model": model, "quantize": args.quantize, "uncapped": child_run(args, {}), "capped": []}
    print(json.dumps(report["uncapped"]), file=sys.stderr, flush=True)
    total = None if args.quick else total_device_bytes()
    weights = report["uncapped"].get("weight_bytes")
    for headroom in ([] if total is None or weights is None else [float(h) for h in args.headroom_gb.split(",")]):
        cap = weights + headroom * 2**30
        row = child_run(args, {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{cap / total:.4f}"})
        report["capped"].append({"headroom_gb": headroom, "cap_bytes": int(cap), **row})
        print(json.dumps(report["capped"][-1]), file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuse_memory.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
