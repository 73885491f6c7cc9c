"""FlashDLM at 8B shapes: the per-step cost of an AR guide and end-to-end tokens/s at fixed acceptance rates.

Random bf16 weights (no download): Dream-7B as the diffusion model, a Qwen2.5-0.5B-shaped causal model as its guide
(the real pair shares Qwen2.5's tokenizer). Random weights do not agree, so a fixed acceptance rate is set up
exactly: the rule reveals k tokens per step (low_confidence, steps = G / k) and the guide accepts every draft
(accept=threshold, min_prob=-1) with one chunk per step (chunk = block length), so every step runs one diffusion
forward and one guide forward and commits k tokens: the cost of an AR-guided decode whose guide accepts k drafts per
step. Comparing each guided decode with the same decode unguided isolates the guide's cost per step.

Writes flashdlm_gpu.json under $OUT. Batch 1, prompt 256, 256 new tokens, blocks of 32 (REFERENCE.md §4's setting).

    OUT=results python scripts/bench_flashdlm_gpu.py            # one GPU, about 3 minutes
    OUT=/tmp/q python scripts/bench_flashdlm_gpu.py --quick     # tiny shapes on CPU, seconds
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

from jdlm import strategies as S
from jdlm.config import ModelConfig, dream_7b, tiny
from jdlm.decoding import decode
from jdlm.decoding.ar_guide import ARGuide
from jdlm.model import forward, init_params


def qwen2_5_0_5b() -> ModelConfig:
    """Qwen/Qwen2.5-0.5B(-Instruct) as a causal model on Dream's ids (tied embeddings, q/k/v biases)."""
    return ModelConfig(family="dream", vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2,
                       head_dim=64, mlp_hidden=4864, rope_theta=1e6, norm_eps=1e-6, qkv_bias=True,
                       tie_embeddings=True, logits_shift=False, causal=True, max_seq_len=32768, mask_id=151666,
                       eos_id=151643, pad_id=151643, eot_id=151645)


def shapes(quick: bool):
    if quick:
        model = tiny(family="dream", n_kv_heads=2, qkv_bias=True, logits_shift=True)
        guide = tiny(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, head_dim=16, mlp_hidden=64, causal=True)
        return model, guide, {"prompt": 16, "gen": 32, "block": 8, "repeats": 1, "ks": (1, 4)}, jnp.float32
    return dream_7b(), qwen2_5_0_5b(), {"prompt": 256, "gen": 256, "block": 32, "repeats": 1, "ks": (1, 8)}, jnp.bfloat16


def timed(fn, repeats: int):
    """(first call seconds, median of `repeats` further calls, last result)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes (CPU, seconds)")
    args = p.parse_args()
    model_cfg, guide_cfg, s, dtype = shapes(args.quick)
    t0 = time.perf_counter()
    params = init_params(model_cfg, jax.random.key(0), dtype)
    guide = init_params(guide_cfg, jax.random.key(1), dtype)
    init_s = time.perf_counter() - t0
    P, G, W, R = s["prompt"], s["gen"], s["block"], s["repeats"]
    prompt = np.random.default_rng(0).integers(3, 1000 if not args.quick else 200, size=(1, P)).astype(np.int32)
    rows = []

    # Per call: one full diffusion forward over P + G, and one guide verification of a block (one chunk).
    L = P + G
    tokens = jnp.asarray(np.concatenate([prompt, np.full((1, G), model_cfg.mask_id, np.int32)], axis=1))
    full = jax.jit(lambda prm, t: forward(prm, t, logits_slice=(P, W)).logits)
    first, run, _ = timed(lambda: full(params, tokens), R + 1)
    rows.append({"what": "diffusion full forward (L = P + G)", "run_ms": run * 1e3, "compile_s": first - run})
    part = ARGuide(chunk=W)
    positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (1, L))
    state = part.init(guide, jnp.asarray(prompt), positions, None, L)
    proposal = jnp.asarray(np.random.default_rng(1).integers(3, 1000, size=(1, W)).astype(np.int32))
    verify = jax.jit(lambda g, st, tk, pr: part.verify(g, st, tk, positions, None, pr, jnp.ones((1, W), bool), P,
                                                          model_cfg.mask_id))
    first, run, (_, _, after) = timed(lambda: verify(guide, state, tokens, proposal), R + 1)
    rows.append({"what": f"guide verification, one chunk of {W} against a cache of {L}", "run_ms": run * 1e3,
                 "compile_s": first - run, "guide_forwards": int(after.nfe[0] - state.nfe[0])})

    # End to end: k tokens per step, unguided and with an accept-everything guide (one chunk per step); FreeCache at
    # every k, no cache at the largest (a full 8B forward per step; compile time is the budget here).
    for k, cache in [(k, "freecache") for k in s["ks"]] + [(s["ks"][-1], "none")]:
        for guided in (False, True):
            strategy = S.Strategy(schedule=S.Schedule(gen_length=G, block_length=W, steps=G // k),
                                  rule=S.LowConfidence(), cache=S.parse_cache(cache),
                                  guide=ARGuide(chunk=W, accept="threshold", min_prob=-1.0) if guided else None)
            first, run, result = timed(lambda st=strategy, g=guided: decode(params, prompt, st,
                                                                            guide=guide if g else None), R)
            nfe = int(result.nfe[0])
            rows.append({"what": "decode", "tokens_per_step": k, "cache": cache, "guided": guided,
                         "spec": strategy.spec, "tokens_per_s": G / run, "run_s": run, "compile_s": first - run,
                         "nfe": nfe, "guide_nfe": None if result.guide_nfe is None else int(result.guide_nfe[0]),
                         "ms_per_step": run / nfe * 1e3})
            print(rows[-1], flush=True)
    for row in rows:
        if row["what"] == "decode" and row["guided"]:
            plain = next(r for r in rows if r["what"] == "decode" and not r["guided"] and
                         (r["tokens_per_step"], r["cache"]) == (row["tokens_per_step"], row["cache"]))
            row["guide_ms_per_step"] = row["ms_per_step"] - plain["ms_per_step"]
    # Fast-dLLM's threshold 0.9 with the dual cache, for scale (random weights: about one token per step).
    dual = S.parse_strategy(f"threshold:0.9 dual gen_length={G} block_length={W} steps={G}")
    first, run, result = timed(lambda: decode(params, prompt, dual), R)
    rows.append({"what": "decode", "spec": dual.spec, "tokens_per_s": G / run, "run_s": run, "compile_s": first - run,
                 "nfe": int(result.nfe[0]), "ms_per_step": run / int(result.nfe[0]) * 1e3, "guided": False})
    meta = {"device": jax.devices()[0].device_kind, "model": "quick tiny" if args.quick else "dream-7b random bf16",
            "guide": "quick tiny causal" if args.quick else "qwen2.5-0.5b-shaped random bf16", "batch": 1,
            "prompt": P, "gen_length": G, "block_length": W, "init_s": init_s}
    out = Path(os.environ.get("OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "flashdlm_gpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
