"""Tensor parallel (tp=2) and data parallel (dp=2) decode against one device: tokens/s and ratios, as JSON.

Random weights at a published model's shapes (`jdlm.bench.random_params`, bfloat16 on GPU), the same random
prompts for every layout. Each (batch, strategy) is timed as `jdlm bench` times it: one compiling call, then the
median of --repeats calls. `same_tokens` says whether a layout produced the one-device tokens (in bfloat16 a
different summation order may flip a near-tie; float32 on CPU matches exactly).

    python scripts/bench_sharding.py --out sharding.json                       # 2 GPUs, LLaDA-8B shapes (~4 min)
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python scripts/bench_sharding.py --model test --gen-length 16 --block-length 8 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

LAYOUTS = {"one": None, "tp2": dict(data=1, model=2), "dp2": dict(data=2, model=1)}
DEFAULT_STRATEGIES = ("threshold:0.9 dual", "threshold:0.9")


def time_decode(params, prompt, strategy, repeats: int) -> dict:
    """One compiling call, then the median of `repeats` calls; tokens of the last."""
    import jax
    import numpy as np

    import jdlm

    t0 = time.perf_counter()
    jax.block_until_ready(jdlm.decode(params, prompt, strategy))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = jax.block_until_ready(jdlm.decode(params, prompt, strategy))
        times.append(time.perf_counter() - t0)
    run = statistics.median(times)
    return dict(run_s=round(run, 4), compile_s=round(max(first - run, 0.0), 3),
                tokens_per_s=round(prompt.shape[0] * strategy.schedule.gen_length / run, 2),
                nfe=float(np.mean(np.asarray(result.nfe))), tokens=np.asarray(result.tokens))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llada-8b", choices=["llada-8b", "dream-7b", "test"],
                   help="random weights at these shapes (default llada-8b)")
    p.add_argument("--out", required=True, metavar="OUT.json", help="where to write the results")
    p.add_argument("--batch", type=int, action="append", help="rows per decode; repeat (default 1 and 8)")
    p.add_argument("--strategy", action="append", help=f"strategy spec; repeat (default {DEFAULT_STRATEGIES})")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default=None, help="weights dtype (default bfloat16, float32 on CPU)")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jdlm import bench, sharding
    from jdlm import strategies as S

    devices = jax.devices()
    if len(devices) < 2:
        p.error(f"needs at least 2 devices, {len(devices)} visible")
    dtype = jnp.dtype(args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16"))
    base = S.Strategy(schedule=S.Schedule(gen_length=args.gen_length, block_length=args.block_length,
                                          steps=args.gen_length))
    strategies = {spec: S.parse_strategy(spec, base) for spec in args.strategy or DEFAULT_STRATEGIES}
    batches = args.batch or [1, 8]
    params = jax.device_put(bench.random_params(args.model, dtype), devices[0])
    cfg = params.config
    rng = np.random.default_rng(0)
    prompts = {b: rng.integers(0, min(cfg.vocab_size, cfg.mask_id), size=(b, args.prompt_len)).astype(np.int32)
               for b in batches}
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{args.model} ({dtype.name}) on {len(devices)} x {devices[0].device_kind}; layouts {list(LAYOUTS)}")

    rows, reference = [], {}
    report = dict(model=args.model, dtype=dtype.name, device=devices[0].device_kind, devices=len(devices),
                  prompt_len=args.prompt_len, gen_length=args.gen_length, block_length=args.block_length,
                  repeats=args.repeats, jax=jax.__version__, results=rows)
    for layout, sizes in LAYOUTS.items():
        placed = params if sizes is None else sharding.shard_params(params, sharding.make_mesh(**sizes,
                                                                                              devices=devices[:2]))
        mesh = sharding.mesh_of(placed)  # None on one device
        for batch in batches:
            for spec, strategy in strategies.items():
                r = time_decode(placed, prompts[batch], strategy, args.repeats)
                tokens = r.pop("tokens")
                same = reference.setdefault((batch, spec), tokens)
                rows.append(dict(layout=layout, mesh=None if mesh is None else dict(mesh.shape),
                                 devices=1 if mesh is None else mesh.size, batch=batch, strategy=spec, **r,
                                 same_tokens=bool(np.array_equal(tokens, same))))
                log(f"{layout:>4} batch {batch:>3} {spec:>22}: {r['tokens_per_s']:9.1f} tok/s  NFE {r['nfe']:6.1f}  "
                    f"compile {r['compile_s']:.1f}s")
                write(args.out, report)  # after every row: a run cut short keeps what it measured
        del placed
    log(f"wrote {args.out}")
    return 0


def write(path: str, report: dict) -> None:
    """The report as JSON, each row with its ratio to one device (tokens/s over the one-device tokens/s)."""
    one = {(r["batch"], r["strategy"]): r["tokens_per_s"] for r in report["results"] if r["layout"] == "one"}
    for r in report["results"]:
        r["vs_one_device"] = round(r["tokens_per_s"] / one[(r["batch"], r["strategy"])], 3)
    Path(path).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
