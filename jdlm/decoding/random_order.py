"""RandomOrder: LLaDA `generate` with remasking="random" (reveal positions in a uniformly random order)."""

from __future__ import annotations

import jax

from jdlm.decoding.low_confidence import LowConfidence
from jdlm.decoding.part import part
from jdlm.decoding.proposals import per_row


@part
class RandomOrder(LowConfidence):
    """Each step reveals the schedule's count of masked positions chosen uniformly at random.

    Proposals as LowConfidence (with its EOS options). Confidence is `u ~ U(0, 1)` per block position: row b draws
    `jax.random.uniform(keys[b], (W,))` from its step key, so a run is reproducible from `decode`'s key.
    """

    def propose(self, logits, temperature, keys):
        pairs = jax.vmap(jax.random.split)(keys)  # [B, 2]: one key for the proposal, one for the order
        tokens, _ = self.proposal(logits, temperature, pairs[:, 0])
        return tokens, per_row(jax.random.uniform, pairs[:, 1], tokens.shape[1:])
