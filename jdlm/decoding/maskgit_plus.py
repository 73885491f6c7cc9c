"""MaskGitPlus: Dream alg="maskgit_plus" (confidence = probability of the proposal)."""

from __future__ import annotations

import jax.numpy as jnp

from jdlm.decoding.dream_rules import DreamRule
from jdlm.decoding.part import part


@part
class MaskGitPlus(DreamRule):
    """Reveals the positions whose proposal has the highest probability (top-1 probability when greedy)."""

    def confidence_from(self, probs, tokens):
        return jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
