"""Factor: Fast-dLLM's dynamic rule `get_transfer_index_dynamic` (the bar falls with the rank)."""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from jdlm.decoding.part import knob, part
from jdlm.decoding.proposals import gumbel_argmax, token_probability
from jdlm.decoding.rule import Rule
from jdlm.errors import StrategyError


@part
class Factor(Rule):
    """Sort the block's N masked confidences descending, c(1) >= c(2) >= ...; rank n passes when
    c(n) >= 1 - factor / (n + 1), rank 1 always passes. Reveal the ranks before the first failing rank.

    Quirk kept from the reference: when the walk reaches the last rank (rank N fails, or all pass), all N are
    revealed. Example, factor 1, confidences [.9, .8, .6]: bars [-, .667, .75] -> ranks 1, 2 pass, rank 3 fails,
    and rank 3 is the last, so all three are revealed.
    """

    counted: ClassVar[bool] = False
    factor: float = knob(1.0)

    def __post_init__(self):
        if not 0 < self.factor < float("inf"):
            raise StrategyError(f"factor must be a finite number > 0, got {self.factor}")

    def propose(self, logits, temperature, key):
        tokens = gumbel_argmax(logits, temperature, key)
        return tokens, token_probability(logits, tokens)

    def select(self, confidence, candidates, budget, key):
        W = confidence.shape[-1]
        n_masked = candidates.sum(-1, keepdims=True)  # [B, 1]
        order = jnp.argsort(-confidence, axis=-1, stable=True)
        ranked = jnp.take_along_axis(confidence, order, axis=-1)  # [B, W], -inf past n_masked
        rank = jnp.arange(1, W + 1)  # 1-based
        passes = (ranked >= 1 - self.factor / (rank + 1)) | (rank == 1)
        fails = ~passes & (rank <= n_masked)
        first_fail = jnp.where(fails.any(-1, keepdims=True), jnp.argmax(fails, axis=-1)[:, None] + 1, n_masked + 1)
        n_reveal = jnp.where(first_fail >= n_masked, n_masked, first_fail - 1)  # the reference's last-rank quirk
        position_rank = jnp.argsort(order, axis=-1, stable=True)
        return candidates & (position_rank < n_reveal)
