"""Decoding: the step function, the compiled loop, and the strategy parts it composes (`jdlm.strategies`).

Names are imported on first use (PEP 562), so `jdlm.decoding.names` (the name table the CLI's help reads) loads
without JAX.
"""

from __future__ import annotations

import importlib

from jdlm.decoding import names

_EXPORTS = {
    # the loop
    "decode": "loop", "decode_steps": "loop", "init_state": "loop", "step": "loop", "running": "loop",
    "result": "loop", "prefetch": "loop", "abstract_params": "loop",
    "DecodeResult": "state", "DecodeState": "state", "Trace": "state", "pad_prompts": "inputs",
    # composing a strategy, and its text / JSON forms
    "Strategy": "strategy", "Schedule": "schedule", "Guidance": "guidance", "llada": "strategy", "dream": "strategy",
    "fast_dllm": "strategy", "parse_strategy": "strategy", "parse_rule": "strategy", "parse_cache": "strategy",
    "Rule": "rule", "Commit": "commit",
    # errors
    "InputError": "inputs", "StrategyError": "schedule",
}
# Every named part, from the one name table: `jdlm.strategies.Threshold`, `.DualCache`, `.Prophet`, ...
for _entry in (*names.RULES.values(), *names.CACHES.values(), *names.COMMITS.values(), *names.GUIDES.values()):
    _module, _, _cls = _entry.target.partition(":")
    _EXPORTS[_cls] = _module.rpartition(".")[2]
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jdlm.decoding' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jdlm.decoding.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
