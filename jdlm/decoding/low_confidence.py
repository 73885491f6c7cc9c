"""LowConfidence: LLaDA `generate` with remasking="low_confidence" (reveal the most probable proposals)."""

from __future__ import annotations

import dataclasses

from jdlm.decoding.proposals import gumbel_argmax, token_probability
from jdlm.decoding.rule import Rule


@dataclasses.dataclass(frozen=True, kw_only=True)
class LowConfidence(Rule):
    """Each step reveals the schedule's count of masked positions whose proposal is most probable.

    Proposal: Gumbel-max at the schedule's temperature (argmax at 0). Confidence: the softmax probability of the
    proposal under the un-noised logits (ML-GSAI/LLaDA generate.py).
    """

    def propose(self, logits, temperature, key):
        tokens = gumbel_argmax(logits, temperature, key)
        return tokens, token_probability(logits, tokens)
