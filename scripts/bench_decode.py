"""Decode throughput per strategy (tokens/s, NFE, compile time, ratios to the floors) as JSON; CPU or GPU.
`jdlm bench` does the same with more options (--suite, several batch sizes and prompt lengths).

    python scripts/bench_decode.py --model tiny --gen-length 64 --block-length 16
    python scripts/bench_decode.py --model random:llada-8b --prompt-len 256 --gen-length 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp


def main(argv=None) -> int:
    from jdlm import bench, roofline
    from jdlm.checkpoint import load_params

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="checkpoint dir, 'tiny', or random:llada-8b|dream-7b|test")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default=None, help="weights dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    p.add_argument("--only", default=None, help="comma-separated strategy names to run")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    if args.model.startswith("random:"):
        params = bench.random_params(args.model.split(":", 1)[1], jnp.dtype(dtype))
    else:
        params = load_params(args.model, dtype)
    strategies = bench.default_strategies(args.gen_length, args.block_length)
    if args.only:
        strategies = {k: v for k, v in strategies.items() if k in args.only.split(",")}
    print(f"{args.model} on {jax.devices()[0].device_kind}: batch {args.batch}, prompt {args.prompt_len}, "
          f"gen {args.gen_length}, block {args.block_length}, {dtype}", file=sys.stderr)
    floors = roofline.measure_floors(params.dtype, quick=jax.default_backend() == "cpu")
    results = bench.run(params, strategies, batch=args.batch, prompt_len=args.prompt_len, repeats=args.repeats,
                        progress=lambda line: print(line, file=sys.stderr), floors=floors, model=args.model)
    text = bench.to_json(results, floors)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(json.dumps(json.loads(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
