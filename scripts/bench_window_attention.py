"""The window attention kernel (jdlm/kernels/window_attention.py) against cuDNN's and XLA's attention at LLaDA-8B
shapes: the attention alone, and a dual-cache decode with the kernel off and on.

  attention: T = 32 queries, 32 query and kv heads of 128, bf16, a padding mask over S keys (B, S in 1 x 512,
    8 x 512, 1 x 2304): microseconds per call (the median of 5 timed runs of 320 calls chained in one compiled loop,
    each call's queries depending on the last one's output, as layers do) for cuDNN, XLA, and the kernel at its
    default chunk and at each other chunk and warp count that fits; each one's largest difference from float32
    attention over the same operands.
  decode: random LLaDA-8B weights (bf16), B = 1, prompt 256, 256 tokens, blocks of 32, one token a step, the dual
    cache (the same strategy as scripts/bench_quant.py): tokens/s and the mean step's time with the kernel off and
    on, and the share of generated tokens the two agree on (rounding differs, so a random model may drift apart).
Writes window_attention.json under $OUT (or --out).

    python scripts/bench_window_attention.py             # GPU, LLaDA-8B shapes (about 2 minutes on an H100)
    python scripts/bench_window_attention.py --quick     # CPU smoke run, tiny shapes (the kernel interpreted)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jdlm import bench, decode, roofline
from jdlm import strategies as S
from jdlm.kernels import window_attention as W

LLADA_8B = {"T": 32, "N": 32, "K": 32, "H": 128, "cases": [(1, 512), (8, 512), (1, 2304)], "calls": 320}
QUICK = {"T": 8, "N": 4, "K": 2, "H": 16, "cases": [(1, 64)], "calls": 4}


def operands(shape: dict, batch: int, keys: int):
    """q [B, T, N, H], k, v [B, S, K, H] in bf16; mask [B, 1, T, S]: row b sees its last S - 16 b keys (padding)."""
    rng = np.random.default_rng(0)
    T, N, K, H = (shape[n] for n in "TNKH")
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in
               ((batch, T, N, H), (batch, keys, K, H), (batch, keys, K, H)))
    mask = jnp.arange(keys)[None, :] >= 16 * jnp.arange(batch)[:, None]  # [B, S]
    return q, k, v, jnp.broadcast_to(mask[:, None, None, :], (batch, 1, T, keys))


def implementations(shape: dict, batch: int, keys: int, sweep: bool = False) -> dict:
    """{name: attention(q, k, v, mask)} to time at this shape; `sweep`: also every keys-per-step, stages and warps
    at the default chunk."""
    fns = {"xla": lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m, implementation="xla")}
    if jax.default_backend() == "gpu":
        fns["cudnn"] = lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m, implementation="cudnn")
    default = W.default_chunk(batch, shape["K"], keys)
    fns[f"kernel chunk={default}"] = lambda q, k, v, m: W.window_attention(q, k, v, m)
    if jax.default_backend() != "gpu":  # the other tilings only on a GPU
        return fns
    for chunk in (64, 128, 256, keys):
        for warps in (4, 8):
            name = f"kernel chunk={chunk} warps={warps}"
            if keys % chunk == 0 and (chunk, warps) != (default, 4) and name not in fns:
                fns[name] = lambda q, k, v, m, c=chunk, w=warps: W.window_attention(q, k, v, m, chunk=c, num_warps=w)
    if sweep:  # keys per step and pipelining stages at the default chunk
        for block_k in (32, 64, 128):
            for stages in (1, 2, 3, 4):
                for warps in (4, 8):
                    if default % block_k == 0:
                        fns[f"kernel chunk={default} block_k={block_k} stages={stages} warps={warps}"] = (
                            lambda q, k, v, m, b=block_k, s=stages, w=warps:
                            W.window_attention(q, k, v, m, block_k=b, num_stages=s, num_warps=w))
    return fns


def time_attention(fn, q, k, v, mask, calls: int) -> float:
    """Median seconds per call over 5 runs of `calls` calls in one jitted fori_loop."""
    @jax.jit
    def run(q, k, v, mask):
        return jax.lax.fori_loop(0, calls, lambda i, q: (q + 1e-3 * fn(q, k, v, mask)).astype(q.dtype), q)

    return roofline.median_time(lambda: run(q, k, v, mask), 5) / calls


def attention_rows(shape: dict, sweep: bool = False, cases=None) -> list[dict]:
    rows = []
    for batch, keys in cases or shape["cases"]:
        q, k, v, mask = operands(shape, batch, keys)
        wide = [a.astype(jnp.float32) for a in (q, k, v)]
        reference = np.asarray(jax.nn.dot_product_attention(*wide, mask=mask, implementation="xla"))
        for name, fn in implementations(shape, batch, keys, sweep).items():
            row = {"batch": batch, "keys": keys, "attention": name}
            try:
                out = np.asarray(jax.jit(fn)(q, k, v, mask), np.float32)
                row["max_abs_diff_vs_f32"] = float(np.abs(out - reference).max())
                row["us"] = round(1e6 * time_attention(fn, q, k, v, mask, shape["calls"]), 2)
            except Exception as e:  # noqa: BLE001  (a tiling this GPU's Triton rejects: keep the other rows)
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def decode_rows(quick: bool) -> list[dict]:
    P, G, block = (16, 16, 8) if quick else (256, 256, 32)
    name = "test" if quick else "llada-8b"
    params = bench.random_params(name, jnp.float32 if quick else jnp.bfloat16)
    strategy = S.parse_strategy(f"low_confidence dual gen_length={G} block_length={block} steps={G}")
    rows, tokens = [], {}
    for mode in ("off", "on"):
        W.set_mode(mode)
        jax.clear_caches()  # the mode is read when the decode is traced
        r = bench.bench_strategy(params, "low_confidence dual", strategy, batch=1, prompt_len=P, repeats=3)
        prompt = bench.random_prompt(params.config, 1, P)
        tokens[mode] = np.asarray(decode(params, prompt, strategy).tokens)
        rows.append({"decode": f"kernel {mode}", "model": name, "prompt_len": P, "gen_length": G,
                     "block_length": block, "tokens_per_s": r.tokens_per_s, "run_s": r.run_s,
                     "compile_s": r.compile_s, "nfe": r.nfe, "mean_step_ms": round(1e3 * r.run_s / r.nfe, 3)})
        print(json.dumps(rows[-1]), flush=True)
    W.set_mode("off")
    rows[-1]["tokens_agree_with_off"] = float((tokens["on"] == tokens["off"]).mean())
    print(f"tokens agree: {rows[-1]['tokens_agree_with_off']}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run)")
    p.add_argument("--parts", default="attention,decode", help="comma-separated: attention, decode")
    p.add_argument("--sweep", action="store_true", help="also time keys per step x stages x warps (GPU)")
    p.add_argument("--cases", default=None, help="B:S,... cases of the attention part (default 1:512,8:512,1:2304)")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)
    os.environ["JDLM_EXECUTABLE_CACHE"] = "0"  # jdlm's store of compiled decodes off: both modes compile afresh
    shape = QUICK if args.quick else LLADA_8B
    parts = args.parts.split(",")
    cases = [tuple(int(v) for v in case.split(":")) for case in args.cases.split(",")] if args.cases else None
    report = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "shape": shape,
              "attention": attention_rows(shape, args.sweep and jax.default_backend() == "gpu", cases)
              if "attention" in parts else [],
              "decode": decode_rows(args.quick) if "decode" in parts else []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "window_attention.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out / 'window_attention.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
