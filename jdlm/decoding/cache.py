"""What every cache shares (the model calls of one decode), and NoCache. PrefixCache and DualCache have files of
their own.

Every cache answers the same question: the logits of the current block's W positions at this step. With a cache,
a block starts with one full forward that also stores every position's keys/values (`refresh`); the block's
later steps run only a window of the sequence against the stored keys/values:

    sequence   [ prompt | done blocks | current block | later blocks ]
    Prefix     .......................[ window: current block + everything after, fresh keys/values ]
    Dual       .......................[ window: current block ]  (later blocks' keys/values stay stale)

Window shapes are static (PrefixCache picks among a few sizes with `lax.switch`). Positions left of the window are read from the cache. For Dream (shifted logits) the
window also covers the position just before the block, whose output predicts the block's first token; its cached
keys/values are kept (`write_from`), so the result equals a window that starts at the block.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from jdlm.decoding.part import part
from jdlm.errors import StrategyError
from jdlm.model import KVCache, Params, forward


@flax.struct.dataclass
class SequenceInputs:
    """What every model call of one decode shares.

    params: the model. positions: [B, L] rotary positions. key_mask: [B, L] bool, True at real positions, or None
    (no padding).
    prompt_len (P) and block_length (W) are static.
    """

    params: Params
    positions: jax.Array
    key_mask: jax.Array | None
    prompt_len: int = flax.struct.field(pytree_node=False)
    block_length: int = flax.struct.field(pytree_node=False)

    def full(self, tokens: jax.Array, block_start: jax.Array, return_cache: bool):
        """Forward over the whole sequence [B, L]: block logits [B, W, V] and (optionally) a fresh KVCache."""
        out = forward(self.params, tokens, positions=self.positions, key_mask=self.key_mask,
                      logits_slice=(block_start, self.block_length), return_cache=return_cache)
        return out.logits, out.cache

    def window(self, tokens, kv: KVCache, start, size: int, block_start):
        """Forward over tokens[:, start:start + size] against `kv`; fresh keys/values kept from `block_start` on."""
        window = jax.lax.dynamic_slice_in_dim(tokens, start, size, axis=1)
        positions = jax.lax.dynamic_slice_in_dim(self.positions, start, size, axis=1)
        out = forward(self.params, window, positions=positions, key_mask=self.key_mask, cache=kv,
                      window_start=start, write_from=block_start, logits_slice=(block_start - start, self.block_length))
        return out.logits, out.cache


def empty_cache(params: Params, batch: int, length: int) -> KVCache:
    """Zeroed keys/values [B, L, K, H] per layer, in the model dtype."""
    c = params.config
    zeros = tuple(jnp.zeros((batch, length, c.n_kv_heads, c.head_dim), params.dtype) for _ in range(c.n_layers))
    return KVCache(k=zeros, v=zeros)


@part
class NoCache:
    """Every step runs the model over the whole sequence (exact; the reference behaviour)."""

    refresh_every = None

    def init(self, params: Params, batch: int, length: int) -> None:
        return None

    def block_logits(self, seq: SequenceInputs, tokens, kv, refresh, block_start):
        logits, _ = seq.full(tokens, block_start, return_cache=False)
        return logits, kv


@part
class RefreshingCache:
    """A cache rebuilt by a full forward at every block start.

    refresh_every: also rebuild it every this many steps inside a block (None: only at block starts). 1 rebuilds it
    at every step, which makes the cached decode exact (and as slow as no cache). Static.
    """

    refresh_every: int | None = None

    def __post_init__(self):
        if self.refresh_every is not None and (not isinstance(self.refresh_every, int) or self.refresh_every <= 0):
            raise StrategyError(f"refresh_every must be a positive integer or None, got {self.refresh_every!r}")

    def init(self, params: Params, batch: int, length: int) -> KVCache:
        return empty_cache(params, batch, length)
