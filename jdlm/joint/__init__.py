"""Approximate joint sampling (ADJUST, REFERENCE.md §3.5): a one-layer sampler head over a frozen base model, its
training on the base's own one-token-per-forward trajectories, and `JointSampler`, the proposer part that uses it.

    head = jdlm.joint.load_head("runs/sampler/head", params.config)
    strategy = jdlm.Strategy(schedule=Schedule(gen_length=64, steps=16), rule=Entropy(),
                             proposer=jdlm.joint.JointSampler(head=head, k=4))
"""

from jdlm.joint.head import SamplerHead, head_hidden, head_logits, init_head, load_head, save_head
from jdlm.joint.sampler import JointSampler

__all__ = ["SamplerHead", "init_head", "head_hidden", "head_logits", "save_head", "load_head", "JointSampler"]
