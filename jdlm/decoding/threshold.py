"""Threshold: Fast-dLLM parallel decoding (reveal every proposal at least tau confident)."""

from __future__ import annotations

from typing import ClassVar

from jdlm.decoding.part import knob, part
from jdlm.decoding.proposals import gumbel_argmax, token_probability
from jdlm.decoding.rule import Rule, best_one
from jdlm.errors import StrategyError


@part
class Threshold(Rule):
    """Reveals every masked position of the block whose confidence is >= `threshold`, and always at least the
    single most confident one (NVlabs/Fast-dLLM `get_transfer_index`), so a block needs at most W steps.

    Confidence: softmax probability of the proposal. (Fast-dLLM computes it in float64; jdlm in float32, so a
    confidence within ~1e-7 of the threshold may compare the other way.)
    """

    counted: ClassVar[bool] = False
    threshold: float = knob(0.9)

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise StrategyError(f"threshold must be in (0, 1], got {self.threshold}")

    def propose(self, logits, temperature, key):
        tokens = gumbel_argmax(logits, temperature, key)
        return tokens, token_probability(logits, tokens)

    def select(self, confidence, candidates, budget, key):
        return (candidates & (confidence >= self.threshold)) | best_one(confidence, candidates)
