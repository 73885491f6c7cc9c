"""Wall clock of the joint sampler head at 8B shapes (issue 19): what one head pass costs against a cached
decode step and a full forward pass.

Random LLaDA-8B weights (`jdlm.bench.random_params`) and a random head of that shape (`jdlm.joint.init_head`, its
output norm set to 1 so that it is not the identity; the cost is the same as a trained head's). Two decodes that
differ only in the head: low confidence, 4 tokens per step (steps = gen_length / 4), the dual cache, B rows,
prompt 256, 256 tokens in blocks of 32, once from one forward's marginals and once with `JointSampler(head, k=4)`
(3 head passes a step). Random weights make both run the same steps, so

    head pass = (joint decode - marginal decode) / (steps * 3)

and a cached step is the marginal decode's time per step less its full forwards (`jdlm.bench.bench_strategy`,
`cached_step_ms`). Writes joint_head.json under $OUT (or --out).

    python scripts/bench_joint_head.py                # one GPU: B = 1 and 8
    python scripts/bench_joint_head.py --quick        # CPU smoke run: the small test model
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp

from jdlm import bench, roofline
from jdlm import strategies as S
from jdlm.joint import JointSampler, init_head


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the small test model on a CPU")
    p.add_argument("--model", default=None, help="random shapes: llada-8b (default), dream-7b")
    p.add_argument("--batch", type=int, action="append", help="rows (repeat; default 1 and 8)")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    model = args.model or ("test" if args.quick else "llada-8b")
    dtype = jnp.float32 if args.quick else jnp.bfloat16
    prompt_len, G, W, k = (16, 16, 8, 4) if args.quick else (256, 256, 32, 4)
    params = bench.random_params(model, dtype)
    head = init_head(params.config, jax.random.key(0), dtype=dtype)
    head = head.replace(weights={**head.weights, "out_norm": jnp.ones_like(head.weights["out_norm"])})
    schedule = S.Schedule(gen_length=G, block_length=W, steps=G // k)
    marginal = S.Strategy(schedule=schedule, rule=S.LowConfidence(), cache=S.DualCache())
    joint = marginal.replace(proposer=JointSampler(head=head, k=k))
    floors = roofline.measure_floors(dtype, quick=args.quick)
    rows = []
    for batch in args.batch or [1, 8]:
        plain = bench.bench_strategy(params, "marginal k=4", marginal, batch=batch, prompt_len=prompt_len,
                                     floors=floors, model=model)
        with_head = bench.bench_strategy(params, "joint k=4", joint, batch=batch, prompt_len=prompt_len, model=model)
        steps = schedule.steps
        head_ms = (with_head.run_s - plain.run_s) / (steps * (k - 1)) * 1e3
        cached_ms = plain.cached_step_ms
        row = {"batch": batch, "steps": steps, "marginal_run_s": plain.run_s, "joint_run_s": with_head.run_s,
               "head_pass_ms": round(head_ms, 3), "cached_step_ms": cached_ms,
               "full_forward_ms": None if plain.full_forward_s is None else round(plain.full_forward_s * 1e3, 3),
               "head_pass_over_cached_step": round(head_ms / cached_ms, 4) if cached_ms else None,
               "joint_over_marginal_decode": round(with_head.run_s / plain.run_s, 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": model, "dtype": jnp.dtype(dtype).name, "device": jax.devices()[0].device_kind,
            "prompt_len": prompt_len, "gen_length": G, "block_length": W, "k": k, "floors": floors.as_dict()}
    (out / "joint_head.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
