"""The float matmul kernels (jdlm/kernels/float_linear.py) against XLA on a GPU: LLaDA-8B's stacked gate|up with the
SwiGLU and its down projection at 32 rows (largest difference relative to the largest output), a 2-layer
LLaDA-8B-wide forward with the kernels on and off (the logits' largest relative difference, top-1 agreement, the
kernel calls counted) and a gradient through it (derivatives are XLA's in both modes). Writes gpu_check.json under
$OUT (or --out).

    python scripts/check_float_kernel_gpu.py            # one Hopper GPU, about 30 s
    python scripts/check_float_kernel_gpu.py --quick    # tiny shapes in Pallas's interpreter on CPU, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jdlm.config import llada_8b, tiny
from jdlm.kernels import float_linear as F
from jdlm.kernels import weight_only_matmul as W
from jdlm.model import forward, fuse_projections, init_params


def relative_difference(got, want) -> float:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return float(np.abs(got - want).max() / np.abs(want).max())


def check(quick: bool) -> dict:
    cfg = dataclasses.replace(tiny() if quick else llada_8b(), n_layers=2)
    dtype = jnp.float32 if quick else jnp.bfloat16
    rows, d, f = (16 if quick else 32), cfg.d_model, cfg.mlp_hidden
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (rows, d), dtype)
    gate_up = (jax.random.normal(keys[1], (d, 2, f), jnp.float32) * 0.02).astype(dtype)
    down = (jax.random.normal(keys[2], (f, d), jnp.float32) * 0.02).astype(dtype)
    wide = [jnp.einsum("MD,DF->MF", x, gate_up[:, i], preferred_element_type=jnp.float32) for i in (0, 1)]
    report = {"device": jax.devices()[0].device_kind, "quick": quick, "rows": rows}
    report["swiglu_rel_diff"] = relative_difference(
        W.stacked_swiglu_matmul(x, gate_up, tiling=W.float_tiling(rows, d, f, splits=False)),
        jax.nn.silu(wide[0]) * wide[1])
    h = jax.random.normal(keys[3], (rows, f), dtype)
    report["down_rel_diff"] = relative_difference(
        W.weight_only_matmul(h, down, None, tiling=W.float_tiling(rows, f, d)),
        jnp.einsum("MF,FD->MD", h, down, preferred_element_type=jnp.float32))

    params = fuse_projections(init_params(cfg, jax.random.key(1), dtype, std=0.02))
    tokens = jax.random.randint(jax.random.key(2), (1, rows), 0, min(1000, cfg.vocab_size))
    logits, grads = {}, {}
    for mode in ("on", "off"):
        with F.use_kernel(mode):
            fn = jax.jit(lambda p, t: forward(p, t).logits)
            logits[mode] = np.asarray(fn(params, tokens), np.float32)
            report[f"pallas_calls_{mode}"] = str(jax.make_jaxpr(fn)(params, tokens)).count("pallas_call")
            grad = jax.jit(jax.grad(lambda p: forward(p, tokens).logits.astype(jnp.float32).std()))(params)
            grads[mode] = grad.weights["layers"][0]["gate_up"]
    report["forward_rel_diff"] = relative_difference(logits["on"], logits["off"])
    report["forward_top1_agree"] = float((logits["on"].argmax(-1) == logits["off"].argmax(-1)).mean())
    report["grad_rel_diff"] = relative_difference(grads["on"], grads["off"])
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes in Pallas's interpreter (a CPU smoke run)")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="output folder (default $OUT or .)")
    args = p.parse_args(argv)
    report = check(args.quick)
    print(json.dumps(report))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
