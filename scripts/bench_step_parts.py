"""Where a cached decode step's time goes at 8B shapes: the step's layer stack timed whole and in parts, against
the weight-read floor.

A cached decode step runs every layer over the block's T queries against the KV cache (S keys). This times, per
step (B rows, T = 32 queries, S = 512 keys, random bf16 or int8 weights of LLaDA-8B's 32 layers from
jdlm.bench.random_params and jdlm.quantize; the LM head and embedding left out):
  layers        the step's layer stack: projections, rotary, cache write, cuDNN attention, MLP (jdlm.model's
                own `qkv_projections`, `swiglu`, `linear`); the caches are loop carries, updated in place
  layers xla-attention    the same with XLA's attention (jax.nn.dot_product_attention implementation="xla")
  layers kernel-attention the same with jdlm's window attention kernel (jdlm/kernels/window_attention.py, as its
                mode "on" runs it: the keys split into chunks over the grid)
  layers head-major      the same with the caches laid out [B, K, S, H] and attention as two einsums
  layers no-attention    the same without attention (the window's values read back from the cache instead)
  matmuls       the same stack without attention, rotary and the cache (q, k, v, o, gate, up, down and the norms)
  matmuls fused the same with q|k|v as one [D, (N + 2K) H] matrix and gate|up as one [D, 2F] matrix
  copy floor    the layers' weight bytes at the copy bandwidth measured in the same run (jdlm.roofline)
Each figure is the median of 5 timed runs of 20 steps in one compiled loop (tokens differ per step, so nothing is
hoisted out of the loop). Writes step_parts.json under $OUT (or --out).

    python scripts/bench_step_parts.py                 # GPU: B = 1 and 8, bf16 and int8
    python scripts/bench_step_parts.py --quick         # CPU smoke run, tiny shapes
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp

from jdlm import bench, roofline
from jdlm.kernels import window_attention
from jdlm.model import keep_in_loop, linear, qkv_projections, rms_norm, rotary, swiglu
from jdlm.quantize import quantize_params, scale_name

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
PARTS = ("layers", "layers xla-attention", "layers kernel-attention", "layers head-major", "layers no-attention",
         "matmuls", "matmuls fused")


def random_layers(model: str, mode: str) -> tuple[dict, list[dict]]:
    """(shape, layers): random weights of `model` (`jdlm.bench.random_params`), one weight dict per layer in
    jdlm.model's layout, int8 with float32 scales for `mode` "int8" (`jdlm.quantize.quantize_params`); shape holds
    the sizes the parts need (D, N, K, H, F, layers)."""
    params = bench.random_params(model, jnp.bfloat16)
    if mode == "int8":
        params = quantize_params(params, "int8")
    cfg = params.config
    shape = {"D": cfg.d_model, "N": cfg.n_heads, "K": cfg.n_kv_heads, "H": cfg.head_dim, "F": cfg.mlp_hidden,
             "layers": cfg.n_layers}
    return shape, list(params.weights["layers"])


def fuse(layer: dict) -> dict:
    """q|k|v into one [D, N + 2K, H] matrix and gate|up into one [D, 2F] (scales alike)."""
    out = {n: layer[n] for n in ("attn_norm", "mlp_norm", "o", "down")}
    out.update({scale_name(n): layer[scale_name(n)] for n in ("o", "down") if scale_name(n) in layer})
    out["qkv"] = jnp.concatenate([layer["q"], layer["k"], layer["v"]], axis=1)
    out["gate_up"] = jnp.concatenate([layer["gate"], layer["up"]], axis=1)
    if scale_name("q") in layer:
        out[scale_name("qkv")] = jnp.concatenate([layer[scale_name(n)] for n in ("q", "k", "v")], axis=0)
        out[scale_name("gate_up")] = jnp.concatenate([layer[scale_name(n)] for n in ("gate", "up")], axis=0)
    return out


def step_fn(shape: dict, part: str):
    """(layers, x [B, T, D], caches: (k, v) [B, S, K, H] per layer, start) -> (x, caches): one step of `part`."""
    N, K = shape["N"], shape["K"]

    def step(layers, x, caches, start):
        new_caches = []
        positions = start + jnp.arange(x.shape[1], dtype=jnp.int32)[None]
        if any(scale_name("q") in layer or scale_name("qkv") in layer for layer in layers):
            layers = [keep_in_loop(layer, x) for layer in layers]
        for layer, (cache_k, cache_v) in zip(layers, caches):
            h = rms_norm(x, layer["attn_norm"], 1e-5)
            if part == "matmuls fused":
                qkv = linear("BTD,DNH->BTNH", h, layer, "qkv")
                v = qkv[:, :, N + K:]
                x = x + linear("BTNH,NHD->BTD", jnp.repeat(v, N // K, axis=2), layer, "o")
                gu = linear("BTD,DF->BTF", rms_norm(x, layer["mlp_norm"], 1e-5), layer, "gate_up")
                g, u = jnp.split(gu, 2, axis=-1)
                x = x + linear("BTF,FD->BTD", jax.nn.silu(g) * u, layer, "down")
                new_caches.append((cache_k, cache_v))
                continue
            q, k, v = qkv_projections(h, layer)
            if part.startswith("layers"):
                q, k = rotary(q, positions, 5e5), rotary(k, positions, 5e5)
                if part == "layers head-major":  # caches [B, K, S, H]: attention without transposes
                    B, T = q.shape[:2]
                    cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.transpose(0, 2, 1, 3), start, 2)
                    cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.transpose(0, 2, 1, 3), start, 2)
                    scores = jnp.einsum("BTKGH,BKSH->BKGTS", q.reshape(B, T, K, N // K, -1), cache_k,
                                        preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
                    probs = jax.nn.softmax(scores, axis=-1).astype(cache_v.dtype)
                    attn = jnp.einsum("BKGTS,BKSH->BTKGH", probs, cache_v).reshape(q.shape)
                    new_caches.append((cache_k, cache_v))
                    x = x + linear("BTNH,NHD->BTD", attn, layer, "o")
                    h = rms_norm(x, layer["mlp_norm"], 1e-5)
                    x = x + linear("BTF,FD->BTD", swiglu(h, layer), layer, "down")
                    continue
                cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, k, start, 1)
                cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, v, start, 1)
                if part == "layers no-attention":  # the window's fresh values, read back from the cache
                    attn = jnp.repeat(jax.lax.dynamic_slice_in_dim(cache_v, start, q.shape[1], 1), N // K, axis=2)
                elif part == "layers kernel-attention":
                    attn = window_attention.window_attention(q, cache_k, cache_v)
                else:
                    xla = part == "layers xla-attention" or jax.default_backend() != "gpu"
                    attn = jax.nn.dot_product_attention(q, cache_k, cache_v, implementation="xla" if xla else "cudnn")
            else:
                attn = jnp.repeat(v, N // K, axis=2)
            new_caches.append((cache_k, cache_v))
            x = x + linear("BTNH,NHD->BTD", attn, layer, "o")
            h = rms_norm(x, layer["mlp_norm"], 1e-5)
            x = x + linear("BTF,FD->BTD", swiglu(h, layer), layer, "down")
        return x, new_caches

    return step


def time_part(shape: dict, layers: list[dict], part: str, batch: int, queries: int, keys: int, steps: int,
              repeats: int) -> float:
    """Median seconds per step of `part` over `repeats` runs of `steps` steps in one jitted fori_loop."""
    D, K, H = shape["D"], shape["K"], shape["H"]
    cache_shape = (batch, K, keys, H) if part == "layers head-major" else (batch, keys, K, H)
    caches = [(jnp.zeros(cache_shape, jnp.bfloat16),) * 2 for _ in layers]
    step = step_fn(shape, part)

    @jax.jit
    def run(layers, x, caches):
        def body(i, carry):
            x, caches = carry
            return step(layers, x + i.astype(x.dtype) * 1e-3, caches, (i * queries) % (keys - queries))
        return jax.lax.fori_loop(0, steps, body, (x, caches))[0]

    x = jax.random.normal(jax.random.key(1), (batch, queries, D), jnp.bfloat16)
    return roofline.median_time(lambda: run(layers, x, caches), repeats) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run)")
    p.add_argument("--batch", type=int, action="append", help="rows (repeat; default 1 and 8)")
    p.add_argument("--modes", default="bf16,int8")
    p.add_argument("--parts", default=",".join(PARTS), help=f"which parts (comma-separated; default all: {PARTS})")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    model = "test" if args.quick else "llada-8b"
    queries, keys, steps = (8, 32, 3) if args.quick else (32, 512, 20)
    floors = roofline.measure_floors(jnp.bfloat16, quick=args.quick)
    rows = []
    for mode in args.modes.split(","):
        shape, layers = random_layers(model, mode)
        weight_bytes = sum(a.size * a.dtype.itemsize for layer in layers for n, a in layer.items()
                           if n in PROJECTIONS)
        floor_s = weight_bytes / (floors.copy_gbps * 1e9)
        fused = [fuse(layer) for layer in layers]
        for batch in args.batch or [1, 8]:
            for part in args.parts.split(","):
                s = time_part(shape, fused if part == "matmuls fused" else layers, part, batch, queries, keys,
                              steps, 5)
                rows.append({"mode": mode, "batch": batch, "part": part, "ms": round(s * 1e3, 3),
                             "floor_ms": round(floor_s * 1e3, 3), "ratio": round(s / floor_s, 3)})
                print(json.dumps(rows[-1]), flush=True)
        del layers, fused
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "model": model, "shape": shape,
            "queries": queries,
            "keys": keys, "floors": floors.as_dict()}
    (out / "step_parts.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
