"""DualCache: Fast-dLLM's dual cache, recomputing only the current block."""

from __future__ import annotations

import jax

from jdlm.decoding.cache import RefreshingCache, SequenceInputs
from jdlm.decoding.part import part


@part
class DualCache(RefreshingCache):
    """Keys/values of every position are computed at the block's first step; later steps recompute only the block
    against the cached prefix and the stale suffix. Approximate."""

    def block_logits(self, seq: SequenceInputs, tokens, kv, refresh, block_start):
        shift = int(seq.params.config.logits_shift)
        W = seq.block_length
        return jax.lax.cond(refresh, lambda: seq.full(tokens, block_start, return_cache=True),
                            lambda: seq.window(tokens, kv, block_start - shift, W + shift, block_start))
