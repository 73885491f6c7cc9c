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

A commit part (Prophet) looks at the whole generation: then (`SequenceInputs.whole_generation`) every forward
returns `GenerationLogits`, the logits of each generated position it computed (all of them on a full forward; from
the block to the window's end on a window), and the step takes the block's logits from there.
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
    prompt_len (P) and block_length (W) are static; so is whole_generation: forwards return `GenerationLogits`
    (every generated position they compute) instead of the block's logits [B, W, V].
    """

    params: Params
    positions: jax.Array
    key_mask: jax.Array | None
    prompt_len: int = flax.struct.field(pytree_node=False)
    block_length: int = flax.struct.field(pytree_node=False)
    whole_generation: bool = flax.struct.field(pytree_node=False, default=False)

    def full(self, tokens: jax.Array, block_start: jax.Array, return_cache: bool):
        """Forward over the whole sequence [B, L]: block logits [B, W, V] (or GenerationLogits) and (optionally) a
        fresh KVCache."""
        P, G = self.prompt_len, tokens.shape[1] - self.prompt_len
        span = (P, G) if self.whole_generation else (block_start, self.block_length)
        out = forward(self.params, tokens, positions=self.positions, key_mask=self.key_mask, logits_slice=span,
                      return_cache=return_cache)
        if self.whole_generation:
            return GenerationLogits(values=out.logits, fresh=jnp.ones((G,), bool)), out.cache
        return out.logits, out.cache

    def window(self, tokens, kv: KVCache, start, size: int, block_start):
        """Forward over tokens[:, start:start + size] against `kv`; fresh keys/values kept from `block_start` on."""
        window = jax.lax.dynamic_slice_in_dim(tokens, start, size, axis=1)
        positions = jax.lax.dynamic_slice_in_dim(self.positions, start, size, axis=1)
        P, G = self.prompt_len, tokens.shape[1] - self.prompt_len
        # Whole generation: every window position but the Dream slot before the block (which lies at P - 1 or later).
        shift = int(self.params.config.logits_shift)
        span = (shift, size - shift) if self.whole_generation else (block_start - start, self.block_length)
        out = forward(self.params, window, positions=positions, key_mask=self.key_mask, cache=kv,
                      window_start=start, write_from=block_start, logits_slice=span)
        if not self.whole_generation:
            return out.logits, out.cache
        B, _, V = out.logits.shape
        values = jax.lax.dynamic_update_slice_in_dim(jnp.zeros((B, G, V), out.logits.dtype), out.logits,
                                                     start + shift - P, axis=1)
        gen = jnp.arange(G) + P  # [G] absolute positions
        # A larger prefix window also recomputes decoded positions left of the block; counting them would make
        # the result depend on the number of window sizes, so only the block and what follows count.
        fresh = (gen >= block_start) & (gen < start + size)
        return GenerationLogits(values=values, fresh=fresh), out.cache


@flax.struct.dataclass
class GenerationLogits:
    """Logits of the generated positions a forward pass computed. values: [B, G, V] (meaningful where fresh);
    fresh: [G] bool, True at the positions this forward computed (always the whole current block)."""

    values: jax.Array
    fresh: jax.Array

    def block(self, offset, width: int) -> jax.Array:
        """The current block's logits [B, W, V]; offset: the block's start in the generation."""
        return jax.lax.dynamic_slice_in_dim(self.values, offset, width, axis=1)


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
