"""Quantised weights at LLaDA-8B shapes: logit drift against bfloat16 and decode tokens/s, bf16 vs int8 vs fp8.

Random weights (`jdlm.bench.random_params`), one bfloat16 set quantised per mode (jdlm/quantize.py). For each mode:
  drift: one full forward over random tokens (B=1, prompt + generation length): max and mean |logit - bf16 logit|,
    the bf16 logits' std for scale, and top-1 agreement with bf16; as a yardstick, the same figures for bf16
    against the same weights computed in float32 (random deep networks amplify any rounding); drift_32_rows the
    same over the first 32 tokens (as many rows as a cached step, so on a GPU the quantised matmuls go through the
    kernel when it is on);
  speed: B=1, the dual cache, one token per step (low confidence, steps = gen length), blocks of 32: tokens/s, the
    mean step's time (run time / NFE) and the weight bytes a step reads over it (bandwidth), and against the
    device's measured floors (`jdlm.roofline`): the cached step alone, its floor and their ratio;
  fusion: where the compiled decode materialises a bf16 copy of a quantised weight (none when XLA fuses every
    int8/fp8 -> bf16 convert into its GEMM: the condition for reading 1 byte per weight), and the GEMM kinds.
JSON to $OUT/bench_quant.json (or --out), plus each quantised mode's compiled decode HLO (gzip).

`--kernel` sets jdlm's weight-only matmul kernel (jdlm/kernels/quantized_linear.py's modes) for the quantised modes:
auto (the default: on a GPU), on, fused (a layer's q|k|v in one call, gate|up and SwiGLU in another), off; a comma
list times each quantised mode once per setting, keyed "int8/kernel=off", "int8/kernel=on", ..., to compare the
kernel with XLA's fused GEMM in one run.

    python scripts/bench_quant.py                 # LLaDA-8B shapes, a GPU (fp8 needs compute capability 8.9+)
    python scripts/bench_quant.py --modes int8 --kernel off,on,fused   # tok/s without and with the kernel
    python scripts/bench_quant.py --quick         # tiny shapes on CPU, seconds
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jdlm import bench, roofline
from jdlm import quantize as Q
from jdlm import strategies as S
from jdlm.kernels import quantized_linear as L
from jdlm.model import forward


def drift(params, reference: np.ndarray, tokens) -> dict:
    """How far `params`' logits lie from `reference` [B, T, V] (float32) over `tokens`."""
    logits = np.asarray(jax.jit(lambda p, t: forward(p, t).logits)(params, tokens), np.float32)
    diff = np.abs(logits - reference)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "reference_std": float(reference.std()), "relative_mean_diff": float(diff.mean() / reference.std()),
            "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).mean())}


def step_bytes(params) -> int:
    """Weight bytes a cached step reads: every layer and the LM head (the embedding table is only gathered)."""
    w = params.weights
    head = w["embed"] if params.config.tie_embeddings else w["lm_head"]
    return Q.weight_bytes(w["layers"]) + Q.weight_bytes([head, w["final_norm"]])


def fusion_check(params, strategy, prompt_len: int, out_dir: Path, mode: str) -> dict:
    """Compiles the decode and lists where it materialises a compute-dtype copy of a quantised weight
    (`jdlm.quantize.dequantized_copies`): none when XLA fuses every convert into its GEMM; the GEMM kinds used."""
    from jdlm.decoding import loop

    args = loop._arguments(params, jnp.zeros((1, prompt_len), jnp.int32), strategy, None, None)
    hlo = loop._decode_loop.lower(*args).compile().as_text()
    (out_dir / f"decode_{mode}.hlo.txt.gz").write_bytes(gzip.compress(hlo.encode()))
    copies = Q.dequantized_copies(hlo, params)
    return {"weight_copies": {name: len(lines) for name, lines in copies.items()},
            "weight_copy_examples": [line for lines in copies.values() for line in lines][:4],
            "kernel_calls": hlo.count('custom_call_target="__gpu$xla.gpu.triton"'),  # Pallas's Triton calls
            "gemm_kinds": sorted(set(re.findall(r'"kind":"(\w+)"', hlo))
                                 | set(re.findall(r'custom_call_target="([\w$]+)"', hlo)))}


def time_mode(entry: dict, name: str, params, references, tokens, strategy, strategy_name: str, prompt_len: int,
              repeats: int, floors, out_dir: Path) -> None:
    """Fills `entry` with `params`' drift from the bf16 logits `references` (over `tokens` and over its first 32),
    its decode speed and (quantised) the fusion check."""
    entry["step_weight_bytes"] = step_bytes(params)
    entry["drift"] = drift(params, references[0], tokens)
    if Q.mode_of(params.weights) is not None:  # as few rows as a cached step: the kernel's path where it is on
        entry["drift_32_rows"] = drift(params, references[1], tokens[:, :32])
    r = bench.bench_strategy(params, strategy_name, strategy, batch=1, prompt_len=prompt_len,
                             repeats=repeats, floors=floors)
    step_s = r.run_s / r.nfe
    entry.update(tokens_per_s=r.tokens_per_s, run_s=r.run_s, compile_s=r.compile_s, nfe=r.nfe,
                 mean_step_ms=round(1e3 * step_s, 3),
                 step_weight_GBps=round(entry["step_weight_bytes"] / step_s / 1e9, 1),
                 **{k: getattr(r, k) for k in ("floor_ratio", "full_forward_s", "cached_step_ms",
                                               "cached_step_floor_ms", "cached_step_ratio", "peak_bytes")})
    if Q.mode_of(params.weights) is not None:
        entry["fusion"] = fusion_check(params, strategy, prompt_len, out_dir, name.replace("/", "_"))
    print(f"{name:>5}: {r.tokens_per_s:8.1f} tok/s  step {entry['mean_step_ms']:.2f} ms  "
          f"{entry['step_weight_GBps']:.0f} GB/s of weights  drift mean {entry['drift']['mean_abs_diff']:.4f} "
          f"max {entry['drift']['max_abs_diff']:.4f} top-1 {entry['drift']['top1_agreement']:.4f}",
          file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes (jdlm.tiny()) for a CPU smoke run")
    p.add_argument("--modes", default="bf16,int8,fp8", help="comma-separated: bf16 (the reference), int8, fp8")
    p.add_argument("--prompt-len", type=int, default=None, help="default 256 (16 with --quick)")
    p.add_argument("--gen-length", type=int, default=None, help="default 256 (32 with --quick)")
    p.add_argument("--block-length", type=int, default=None, help="default 32 (8 with --quick)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kernel", default="auto",
                   help="weight-only matmul kernel for quantised modes: auto (on GPU), on, fused, off, or a comma list "
                        "(each quantised mode once per setting)")
    p.add_argument("--out", default=None, help="output folder (default $OUT, else .)")
    args = p.parse_args(argv)
    P = args.prompt_len or (16 if args.quick else 256)
    G = args.gen_length or (32 if args.quick else 256)
    block = args.block_length or (8 if args.quick else 32)
    out_dir = Path(args.out or os.environ.get("OUT") or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    # A fresh persistent compilation cache: the fusion check's compile of the decode the bench has just compiled
    # is a cache hit (jit's in-memory cache does not serve `lower().compile()`), and the bench's compile times stay
    # real.
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bench_quant_jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    dtype = jnp.float32 if args.quick and jax.default_backend() == "cpu" else jnp.bfloat16
    shape = "test" if args.quick else "llada-8b"

    t0 = start = time.perf_counter()
    base = bench.random_params(shape, dtype)
    jax.block_until_ready(base.weights)
    report = {"shape": shape, "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
              "jax": jax.__version__, "compute_dtype": jnp.dtype(dtype).name, "prompt_len": P, "gen_length": G,
              "block_length": block, "batch": 1, "strategy": f"low_confidence dual steps={G}",
              "init_s": round(time.perf_counter() - t0, 1), "modes": {}}
    floors = roofline.measure_floors(dtype, quick=args.quick)  # the device's matmul and copy rates
    report["floors"] = floors.as_dict()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, base.config.mask_id, (1, P + G)), jnp.int32)
    logits = jax.jit(lambda p, t: forward(p, t).logits)
    references = [np.asarray(logits(base, t), np.float32) for t in (tokens, tokens[:, :32])]
    if dtype != jnp.float32:  # a yardstick for the drifts below: the same weights computed in float32
        wide = base.replace(weights=jax.tree.map(lambda w: w.astype(jnp.float32), base.weights))
        wide_logits = np.asarray(logits(wide, tokens), np.float32)
        del wide
        report["bf16_vs_float32_drift"] = drift(base, wide_logits, tokens)
    strategy = S.parse_strategy(f"low_confidence dual gen_length={G} block_length={block} steps={G}")
    settings = args.kernel.split(",")
    for setting in settings:
        L.set_mode(setting)  # rejects an unknown setting before any timing
    runs = [(mode, setting) for mode in args.modes.split(",") for setting in (settings if mode in Q.MODES else [None])]
    quantized: dict = {}
    for mode, setting in runs:
        name = mode if setting is None or len(settings) == 1 else f"{mode}/kernel={setting}"
        entry: dict = {"kernel": setting}
        report["modes"][name] = entry
        if setting is not None:
            L.set_mode(setting)  # read when the decode is traced: drop what was compiled under another setting
            jax.clear_caches()
        try:
            t0 = time.perf_counter()
            if mode not in quantized:  # one quantised copy at a time beside the bf16 weights
                quantized = {mode: base if mode == "bf16" else Q.quantize_params(base, Q.check_mode(mode))}
            params = quantized[mode]
            jax.block_until_ready(params.weights)
            entry["quantize_s"] = round(time.perf_counter() - t0, 1)
        except Q.QuantizationError as e:
            entry["skipped"] = str(e)
            print(f"{mode}: skipped ({e})", file=sys.stderr)
            continue
        try:
            time_mode(entry, name, params, references, tokens, strategy, report["strategy"], P, args.repeats, floors,
                      out_dir)
        except Exception as e:  # noqa: BLE001  (e.g. a kernel this GPU's Triton rejects: keep the other runs)
            entry["error"] = f"{type(e).__name__}: {str(e)[:500]}"
            print(f"{name}: failed ({entry['error'][:200]})", file=sys.stderr, flush=True)
        del params
    report["wall_s"] = round(time.perf_counter() - start, 1)
    path = out_dir / "bench_quant.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
