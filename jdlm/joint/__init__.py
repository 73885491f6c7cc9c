"""Approximate joint sampling (ADJUST, REFERENCE.md §3.5): a one-layer sampler head over a frozen base model, its
training on the base's own one-token-per-forward trajectories, and `JointSampler`, the proposer part that uses it.

    head = jdlm.joint.load_head("runs/sampler/head", params.config)
    strategy = jdlm.Strategy(schedule=Schedule(gen_length=64, steps=16), rule=Entropy(),
                             proposer=jdlm.joint.JointSampler(head=head, k=4))

Names are imported on first use, so the `jdlm` command can read `jdlm.joint.config` without JAX.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SamplerHead": "jdlm.joint.head", "init_head": "jdlm.joint.head", "head_hidden": "jdlm.joint.head",
    "head_logits": "jdlm.joint.head", "save_head": "jdlm.joint.head", "load_head": "jdlm.joint.head",
    "JointSampler": "jdlm.joint.sampler",
    "SamplerTrainConfig": "jdlm.joint.config", "train_sampler": "jdlm.joint.train", "export_head": "jdlm.joint.train",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jdlm.joint' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
