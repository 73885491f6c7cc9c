"""Decodes in a fresh process for tests/test_executables.py, with JAX's persistent cache (and so jdlm's store of
executables) in the folder argv[1]. argv[2]: a JSON list of decodes, {"strategy": text, "prompt_length": n,
"steps": bool (decode_steps instead of decode), "prefetch": bool (`jdlm.decoding.prefetch` from the weights'
shapes first, placed on the device by `abstract_params`) or "unplaced" (from `param_shapes` as they are)}. Prints
one JSON line: per decode, its tokens and NFE, what the store did (`executables.EVENTS`, counted over that decode)
and which decode programs JAX lowered (traced)."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jdlm
from jdlm import strategies as S
from jdlm.decoding import abstract_params, executables, prefetch
from jdlm.model import param_shapes

ENTRY_POINTS = ("_decode_loop", "init_state", "_advance")


def main(cache_dir: str, decodes: list[dict]) -> None:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    lowered = []

    def listen(event, duration, **kwargs):
        name = str(kwargs.get("fun_name"))  # e.g. "jit(_decode_loop)"
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.extend(entry for entry in ENTRY_POINTS if entry in name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    config = jdlm.tiny(n_layers=2)
    params = jdlm.init_params(config, jax.random.key(0), jnp.float32)
    out = []
    for d in decodes:
        before = executables.EVENTS.copy()
        lowered.clear()
        prompt = np.arange(3, 3 + d["prompt_length"])[None]
        strategy = S.parse_strategy(d["strategy"])
        shapes = param_shapes(config, jnp.float32)
        shapes = shapes if d.get("prefetch") == "unplaced" else abstract_params(shapes)
        started = prefetch(shapes, prompt, strategy, steps=bool(d.get("steps"))) if d.get("prefetch") else None
        result = list(jdlm.decode_steps(params, prompt, strategy))[-1] if d.get("steps") else \
            jdlm.decode(params, prompt, strategy)
        out.append({"tokens": np.asarray(result.tokens).tolist(), "nfe": np.asarray(result.nfe).tolist(),
                    "events": dict(executables.EVENTS - before), "lowered": list(lowered), "prefetch": started})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
