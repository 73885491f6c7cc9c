"""jdlm: fast, exact decoding for masked-diffusion language models in JAX.

Public names are imported on first use (PEP 562), so `import jdlm` and the `jdlm` command start without JAX.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # models and checkpoints
    "ModelConfig": "jdlm.config", "llada_8b": "jdlm.config", "dream_7b": "jdlm.config", "tiny": "jdlm.config",
    "Params": "jdlm.model", "init_params": "jdlm.model", "load": "jdlm.checkpoint", "load_params": "jdlm.checkpoint",
    "save": "jdlm.checkpoint", "Tokenizer": "jdlm.tokenizer",
    # the forward pass
    "forward": "jdlm.model", "ForwardOutput": "jdlm.model", "KVCache": "jdlm.model",
    "fuse_projections": "jdlm.model",  # q|k|v and gate|up as one weight each: faster decoding on GPU
    # decoding (rules, caches and presets live in jdlm.strategies)
    "decode": "jdlm.decoding", "decode_steps": "jdlm.decoding", "DecodeResult": "jdlm.decoding",
    "Strategy": "jdlm.decoding",
    "Schedule": "jdlm.decoding", "pad_prompts": "jdlm.decoding",
    "decode_causal": "jdlm.decoding.causal",  # causal models (tiny-ar): greedy, left to right
    # errors
    "CheckpointError": "jdlm.checkpoint", "ConfigError": "jdlm.config", "TokenizerError": "jdlm.tokenizer",
    "InputError": "jdlm.decoding", "StrategyError": "jdlm.decoding",
}
__all__ = [*_EXPORTS, "strategies"]


def __getattr__(name: str):
    if name == "strategies":
        value = importlib.import_module("jdlm.decoding")
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'jdlm' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
