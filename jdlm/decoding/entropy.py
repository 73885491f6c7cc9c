"""Entropy: Dream alg="entropy" (confidence = negative entropy of the distribution)."""

from __future__ import annotations

import jax.numpy as jnp

from jdlm.decoding.dream_rules import DreamRule
from jdlm.decoding.part import part


@part
class Entropy(DreamRule):
    """Reveals the positions whose distribution is most peaked: confidence = sum p * log(p + 1e-10)."""

    def confidence_from(self, probs, tokens):
        return jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)
