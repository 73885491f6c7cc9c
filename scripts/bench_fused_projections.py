"""Fused projections (jdlm.model.fuse_projections: q|k|v and gate|up as one weight each) against the separate
weights, at LLaDA-8B shapes on one GPU: decode tokens/s and the cached step against its floor, bf16 and int8, B = 1
and 8 (the dual cache, one token per step, prompt 256, 256 new tokens in blocks of 32). JSON to $OUT.

    python scripts/bench_fused_projections.py
    python scripts/bench_fused_projections.py --quick    # tiny shapes on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
from pathlib import Path

import jax.numpy as jnp

from jdlm import bench, roofline
from jdlm import strategies as S
from jdlm.model import fuse_projections
from jdlm.quantize import quantize_params


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--modes", default="bf16,int8")
    p.add_argument("--batch-size", default="1,8")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)
    model, prompt, gen, block = ("test", 16, 16, 8) if args.quick else ("llada-8b", 256, 256, 32)
    floors = roofline.measure_floors(jnp.bfloat16, quick=args.quick)
    strategy = S.parse_strategy(f"low_confidence dual steps={gen}", S.Strategy(
        schedule=S.Schedule(gen_length=gen, block_length=block, steps=gen)))
    rows = []
    for mode in args.modes.split(","):
        params = bench.random_params(model) if not args.quick else bench.random_params("test", jnp.float32)
        if mode != "bf16":
            params = quantize_params(params, mode)
        for fused in (False, True):
            if fused:
                params = fuse_projections(params)
                gc.collect()
            for batch in (int(b) for b in args.batch_size.split(",")):
                r = bench.bench_strategy(params, "low_confidence dual", strategy, batch=batch, prompt_len=prompt,
                                         repeats=args.repeats, floors=floors, model=model)
                row = {"mode": mode, "fused": fused, "batch": batch, "tokens_per_s": r.tokens_per_s,
                       "cached_step_ms": r.cached_step_ms, "cached_step_ratio": r.cached_step_ratio,
                       "full_forward_s": r.full_forward_s, "run_s": r.run_s, "compile_s": r.compile_s}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        del params
        gc.collect()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fused_projections.json").write_text(json.dumps({"floors": dataclasses.asdict(floors), "rows": rows},
                                                           indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
