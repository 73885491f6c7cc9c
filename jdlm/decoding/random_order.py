"""RandomOrder: LLaDA `generate` with remasking="random" (reveal positions in a uniformly random order)."""

from __future__ import annotations

import dataclasses

import jax

from jdlm.decoding.proposals import gumbel_argmax, per_row
from jdlm.decoding.rule import Rule


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomOrder(Rule):
    """Each step reveals the schedule's count of masked positions chosen uniformly at random.

    Confidence is `u ~ U(0, 1)` per block position: row b draws `jax.random.uniform(keys[b], (W,))` from its
    step key, so a run is reproducible from `decode`'s key (see `decode` for how row keys are derived).
    """

    def propose(self, logits, temperature, keys):
        gumbel_keys, uniform_keys = split_rows(keys)
        tokens = gumbel_argmax(logits, temperature, gumbel_keys)
        return tokens, per_row(jax.random.uniform, uniform_keys, tokens.shape[1:])


def split_rows(keys):
    """Two independent keys per row: keys [B] -> ([B], [B])."""
    pairs = jax.vmap(jax.random.split)(keys)  # [B, 2]
    return pairs[:, 0], pairs[:, 1]
