"""MaskGitPlus: Dream alg="maskgit_plus" (confidence = probability of the proposal)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdlm.decoding.dream_rules import DreamRule


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskGitPlus(DreamRule):
    """Reveals the positions whose proposal has the highest probability (top-1 probability when greedy)."""

    def confidence_from(self, probs, tokens):
        return jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
