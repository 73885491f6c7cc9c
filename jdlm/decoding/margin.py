"""Margin: Dream alg="topk_margin" (confidence = top-1 minus top-2 probability)."""

from __future__ import annotations

import jax

from jdlm.decoding.dream_rules import DreamRule
from jdlm.decoding.part import part


@part
class Margin(DreamRule):
    """Reveals the positions where the best token leads the runner-up by the widest margin."""

    def confidence_from(self, probs, tokens):
        top2 = jax.lax.top_k(probs, 2)[0]
        return top2[..., 0] - top2[..., 1]
