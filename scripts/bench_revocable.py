"""Wall clock of WINO and ASRD at LLaDA-8B shapes with random bf16 weights, with the verification's cost apart.

    python scripts/bench_revocable.py                 # GPU: LLaDA-8B shapes, B=1, prompt 256, 256 tokens, blocks of 32
    python scripts/bench_revocable.py --quick         # CPU: the tiny config, in seconds

Writes $OUT/bench_revocable.json (OUT defaults to results/; --name changes the file name) after every measurement.
Two parts (--parts; --specs picks the decodes):
  forward  one jitted model call, median of repeats: the plain forward over the sequence (L = P + G tokens, what
           threshold decoding without a cache runs each step), WINO's forward with the W shadow twins (L + W tokens,
           the same call with the verification rows), and ASRD's (the same plus its input embeddings: anchor injection
           and perturbation). verification_overhead = shadow / plain - 1 is what verifying costs per step.
  decode   tokens/s of whole decodes: threshold 0.9 without a cache and with the dual cache, wino:0.6 and asrd:0.7.
           With random weights no proposal reaches a threshold, so every rule reveals one token a step (NFE = G,
           re-masking never runs): the decode times compare the cost of a step, not of a trained model's number
           of steps. For that, multiply by the NFE measured on a trained model (scripts/eval_revocable.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jdlm import bench
from jdlm import strategies as S
from jdlm.decoding.cache import SequenceInputs
from jdlm.decoding.loop import row_keys
from jdlm.decoding.shadow import shadow_logits
from jdlm.model import forward

SPECS = ("threshold:0.9", "threshold:0.9 dual", "wino:0.6", "asrd:0.7")


def median_seconds(fn, *args, repeats: int) -> float:
    """Median wall time of fn(*args) after one warm-up (compiling) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward_costs(params, prompt, strategy, repeats: int) -> dict:
    """Seconds per call of the plain forward and of WINO's and ASRD's shadow forwards, at the first block."""
    rule = S.parse_rule("asrd:0.7")
    (B, P), G, W = prompt.shape, strategy.schedule.gen_length, strategy.schedule.block_length
    L = P + G
    mask_id = params.config.mask_id
    tokens = jnp.concatenate([jnp.asarray(prompt), jnp.full((B, G), mask_id, jnp.int32)], axis=1)  # block 0 to decode
    memory, keys = rule.init_memory(B, G), row_keys(jax.random.key(0), B)
    positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    start = jnp.int32(P)

    def inputs(params):
        return SequenceInputs(params=params, positions=positions, key_mask=None, prompt_len=P, block_length=W)

    # The weights are arguments, never closed over: 16 GB of constants would go into the compiled program.
    @jax.jit
    def plain(params, tokens):
        return forward(params, tokens, logits_slice=(start, W)).logits

    @jax.jit
    def wino(params, tokens):
        return shadow_logits(inputs(params), tokens, start, mask_id)

    @jax.jit
    def asrd_step(params, tokens, memory, keys):
        extra = rule.extra_embed(params, tokens, memory, start, 0, W, keys)
        return shadow_logits(inputs(params), tokens, start, mask_id, extra)

    t_plain = median_seconds(plain, params, tokens, repeats=repeats)
    t_wino = median_seconds(wino, params, tokens, repeats=repeats)
    t_asrd = median_seconds(asrd_step, params, tokens, memory, keys, repeats=repeats)
    return {"tokens_plain": L, "tokens_shadow": L + W, "plain_s": t_plain, "wino_s": t_wino, "asrd_s": t_asrd,
            "verification_overhead": t_wino / t_plain - 1, "asrd_overhead": t_asrd / t_plain - 1}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny config on CPU, in seconds")
    p.add_argument("--repeats", type=int, default=2, help="timed runs after the compiling one (median)")
    p.add_argument("--parts", nargs="+", default=["forward", "decode"], choices=["forward", "decode"])
    p.add_argument("--specs", nargs="+", default=list(SPECS), help="strategies for the decode part")
    p.add_argument("--name", default="bench_revocable", help="writes $OUT/NAME.json")
    args = p.parse_args(argv)
    if args.quick:
        params, P, G, W = bench.random_params("test", jnp.float32), 16, 32, 8
    else:
        params, P, G, W = bench.random_params("llada-8b", jnp.bfloat16), 256, 256, 32
    prompt = np.random.default_rng(0).integers(0, min(params.config.vocab_size, params.config.mask_id),
                                               size=(1, P)).astype(np.int32)
    base = S.Strategy(schedule=S.Schedule(gen_length=G, block_length=W, steps=G))
    report = {"device": jax.devices()[0].device_kind, "batch": 1, "prompt_len": P, "gen_length": G,
              "block_length": W}
    out = Path(os.environ.get("OUT", "results"))
    out.mkdir(parents=True, exist_ok=True)

    def save():  # after every measurement, so a run cut short still leaves what it measured
        (out / f"{args.name}.json").write_text(json.dumps(report, indent=1))

    if "forward" in args.parts:
        report["forward"] = forward_costs(params, prompt, base, args.repeats)
        print("forward", json.dumps(report["forward"]), flush=True)
        save()
    for spec in args.specs if "decode" in args.parts else ():
        r = bench.bench_strategy(params, spec, S.parse_strategy(spec, base), prompt_len=P, repeats=args.repeats)
        row = {k: v for k, v in r.as_dict().items() if k != "strategy_config"}
        row["s_per_step"] = r.run_s / r.nfe
        print(json.dumps(row), flush=True)
        report.setdefault("decode", []).append(row)
        save()
    print(f"wrote {out / args.name}.json")


if __name__ == "__main__":
    main()
