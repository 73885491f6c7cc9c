"""The float matmul kernels (jdlm/kernels/float_linear.py) on a GPU against XLA: LLaDA-8B's stacked gate|up with
the SwiGLU and its down projection at 32 rows (largest difference relative to the largest output), a 2-layer
LLaDA-8B-wide forward with the kernels on and off (logits' largest relative difference, top-1 agreement, the
kernel calls counted), and a gradient through it (derivatives are XLA's in both modes). Writes gpu_check.json
under $OUT.

    python scripts/check_float_kernel_gpu.py    # one Hopper GPU, about 30 s
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jdlm.config import llada_8b
from jdlm.kernels import float_linear as F
from jdlm.kernels import weight_only_matmul as W
from jdlm.model import forward, fuse_projections, init_params

out = {}
k = jax.random.split(jax.random.key(0), 4)
x = jax.random.normal(k[0], (32, 4096), jnp.bfloat16)
gate_up = (jax.random.normal(k[1], (4096, 2, 12288), jnp.float32) * 0.02).astype(jnp.bfloat16)
down = (jax.random.normal(k[2], (12288, 4096), jnp.float32) * 0.02).astype(jnp.bfloat16)
ref = jax.nn.silu(jnp.einsum("MD,DF->MF", x, gate_up[:, 0], preferred_element_type=jnp.float32)) * \
    jnp.einsum("MD,DF->MF", x, gate_up[:, 1], preferred_element_type=jnp.float32)
got = W.stacked_swiglu_matmul(x, gate_up, tiling=W.float_tiling(32, 4096, 12288, splits=False))
out["swiglu_rel_diff"] = float(jnp.abs(got.astype(jnp.float32) - ref).max() / jnp.abs(ref).max())
h = jax.random.normal(k[3], (32, 12288), jnp.bfloat16)
ref = jnp.einsum("MF,FD->MD", h, down, preferred_element_type=jnp.float32)
got = W.weight_only_matmul(h, down, None, tiling=W.float_tiling(32, 12288, 4096))
out["down_rel_diff"] = float(jnp.abs(got.astype(jnp.float32) - ref).max() / jnp.abs(ref).max())

cfg = llada_8b()
cfg = dataclasses.replace(cfg, n_layers=2)
params = fuse_projections(init_params(cfg, jax.random.key(1), jnp.bfloat16, std=0.02))
tokens = jax.random.randint(jax.random.key(2), (1, 32), 0, 1000)
logits = {}
for mode in ("on", "off"):
    with F.use_kernel(mode):
        fn = jax.jit(lambda p, t: forward(p, t).logits)
        logits[mode] = np.asarray(fn(params, tokens), np.float32)
        out[f"pallas_calls_{mode}"] = str(jax.make_jaxpr(fn)(params, tokens)).count("pallas_call")
out["forward_rel_diff"] = float(np.abs(logits["on"] - logits["off"]).max() / np.abs(logits["off"]).max())
out["forward_top1_agree"] = float((logits["on"].argmax(-1) == logits["off"].argmax(-1)).mean())
grads = {}
for mode in ("on", "off"):
    with F.use_kernel(mode):
        g = jax.jit(jax.grad(lambda p: forward(p, tokens).logits.astype(jnp.float32).std()))(params)
        grads[mode] = np.asarray(g.weights["layers"][0]["gate_up"], np.float32)
out["grad_rel_diff"] = float(np.abs(grads["on"] - grads["off"]).max() / np.abs(grads["off"]).max())
print(json.dumps(out))
os.makedirs(os.environ.get("OUT", "."), exist_ok=True)
open(os.path.join(os.environ.get("OUT", "."), "gpu_check.json"), "w").write(json.dumps(out, indent=1))
