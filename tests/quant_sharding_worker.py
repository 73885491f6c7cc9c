"""Loads quantised weights onto meshes of 8 host CPU devices; prints what tests/test_quantize.py checks, as JSON.
Run in its own process: the device count is fixed when JAX starts.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python tests/quant_sharding_worker.py DIR
"""

from __future__ import annotations

import json
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import jdlm
from jdlm import sharding
from jdlm.quantize import quantize_params
from jdlm.training import presets
from tests.sharding_worker import CONFIG, random_checkpoint


def logits(params) -> np.ndarray:
    tokens = jnp.asarray(np.arange(24).reshape(2, 12) % CONFIG.vocab_size + 3, jnp.int32)
    return np.asarray(jdlm.forward(params, tokens).logits)


def layout(params, mesh) -> dict:
    """Whether every leaf sits as the partition rules say, and the spec each scale got."""
    want = sharding.param_shardings(CONFIG, mesh, quantize="int8")
    match = jax.tree.all(jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim), params.weights, want))
    layer = params.weights["layers"][0]
    specs = {name: str(tuple(layer[name].sharding.spec)) for name in layer if name.endswith("_scale")}
    return {"shardings_match": bool(match), "scale_specs": specs,
            "dtypes": sorted({str(a.dtype) for a in layer.values()})}


def main(workdir: str) -> None:
    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
    float_dir, int8_dir = f"{workdir}/float", f"{workdir}/int8"
    params = random_checkpoint(float_dir)
    quantized = quantize_params(params, "int8")
    with tempfile.TemporaryDirectory() as tmp:
        jdlm.save(int8_dir, quantized, tokenizer_files=presets.build_task_tokenizer(tmp))
    want = logits(quantized)
    out: dict = {"devices": jax.device_count(), "meshes": {}}
    for data, model in ((1, 8), (2, 4)):
        mesh = sharding.make_mesh(data=data, model=model)
        at_load = jdlm.load_params(float_dir, mesh=mesh, quantize="int8")
        stored = jdlm.load_params(int8_dir, mesh=mesh)
        out["meshes"][f"{data}x{model}"] = {
            "at_load": layout(at_load, mesh), "stored": layout(stored, mesh),
            "at_load_diff": float(np.abs(logits(at_load) - want).max()),
            "stored_diff": float(np.abs(logits(stored) - want).max()),
            "same_weights": jax.tree.all(jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()),
                                                      at_load.weights, quantized.weights))}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
