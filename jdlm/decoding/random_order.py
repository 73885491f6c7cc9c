"""RandomOrder: LLaDA `generate` with remasking="random" (reveal positions in a uniformly random order)."""

from __future__ import annotations

import dataclasses

import jax

from jdlm.decoding.proposals import gumbel_argmax
from jdlm.decoding.rule import Rule


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomOrder(Rule):
    """Each step reveals the schedule's count of masked positions chosen uniformly at random.

    Confidence is `u ~ U(0, 1)` per block position, drawn from the step's key: `jax.random.uniform(
    jax.random.fold_in(step_key, 1), (B, W))`, so a run is reproducible from `decode`'s key.
    """

    def propose(self, logits, temperature, key):
        tokens = gumbel_argmax(logits, temperature, jax.random.fold_in(key, 0))
        return tokens, random_confidence(key, tokens.shape)


def random_confidence(step_key, shape):
    """The documented random stream of RandomOrder: uniforms [B, W] from the step key."""
    return jax.random.uniform(jax.random.fold_in(step_key, 1), shape)
