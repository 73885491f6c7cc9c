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

Every forward returns a `ForwardView`: the logits of the positions the strategy needs (`SequenceInputs.span`: the
block; the generation for a commit part such as Prophet; the whole sequence for a rule that reads every position's
confidence, such as DAWN), with a `fresh` mask of those the forward computed (all of them on a full forward; from
the block to the window's end on a window), and the attention of the block's queries for rules that read it.
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
    Static: prompt_len (P), block_length (W); span, the positions whose logits a forward returns: "block" (what
    every rule needs), "generation" (a commit part looks past the block) or "sequence" (a rule reads every
    position's confidence); probs_layers, the layers whose attention a forward returns (rules that read attention);
    hidden, whether a forward also returns the block's final hidden states (a joint sampler's head reads them).
    """

    params: Params
    positions: jax.Array
    key_mask: jax.Array | None
    prompt_len: int = flax.struct.field(pytree_node=False)
    block_length: int = flax.struct.field(pytree_node=False)
    span: str = flax.struct.field(pytree_node=False, default="block")
    probs_layers: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())
    hidden: bool = flax.struct.field(pytree_node=False, default=False)

    def span_start(self, block_start):
        """Where the span starts in the sequence."""
        return {"block": block_start, "generation": self.prompt_len, "sequence": 0}[self.span]

    def full(self, tokens: jax.Array, block_start: jax.Array, return_cache: bool):
        """Forward over the whole sequence [B, L]: a ForwardView and (optionally) a fresh KVCache."""
        L = tokens.shape[1]
        length = {"block": self.block_length, "generation": L - self.prompt_len, "sequence": L}[self.span]
        out = forward(self.params, tokens, positions=self.positions, key_mask=self.key_mask,
                      logits_slice=(self.span_start(block_start), length), return_cache=return_cache,
                      probs_layers=self.probs_layers, return_hidden=self.hidden)
        # Padding queries say nothing about which keys are sinks: their rows are left out of the column means.
        return self._view(out, jnp.ones((length,), bool), 0, self.key_mask, block_start), out.cache

    def window(self, tokens, kv: KVCache, start, size: int, block_start, *, write_from=None, key_mask=None):
        """Forward over tokens[:, start:start + size] against `kv`; fresh keys/values kept from `write_from` on
        (scalar or [B]; default `block_start`). key_mask: [B, L] to use instead of `self.key_mask` (FreeCache's
        sliding window drops the positions after it)."""
        window = jax.lax.dynamic_slice_in_dim(tokens, start, size, axis=1)
        positions = jax.lax.dynamic_slice_in_dim(self.positions, start, size, axis=1)
        L = tokens.shape[1]
        shift = int(self.params.config.logits_shift)
        # Beyond the block: every window position but the Dream slot before the block (at P - 1 or later).
        span = (block_start - start, self.block_length) if self.span == "block" else (shift, size - shift)
        out = forward(self.params, window, positions=positions,
                      key_mask=self.key_mask if key_mask is None else key_mask, cache=kv, window_start=start,
                      write_from=block_start if write_from is None else write_from, logits_slice=span,
                      probs_layers=self.probs_layers, return_hidden=self.hidden)
        if self.span == "block":
            return self._view(out, jnp.ones((self.block_length,), bool), start, None, block_start), out.cache
        origin = self.span_start(block_start)
        S = L - origin
        B, _, V = out.logits.shape
        logits = jax.lax.dynamic_update_slice_in_dim(jnp.zeros((B, S, V), out.logits.dtype), out.logits,
                                                     start + shift - origin, axis=1)
        at = origin + jnp.arange(S)  # [S] absolute positions
        # A larger prefix window also recomputes decoded positions left of the block; counting them would make
        # the result depend on the number of window sizes, so only the block and what follows count.
        fresh = (at >= block_start) & (at < start + size)
        return self._view(out.replace(logits=logits), fresh, start, None, block_start), out.cache

    def _view(self, out, fresh, query_start, query_mask, block_start) -> "ForwardView":
        hidden = None
        if self.hidden:  # the block's states, each at the position it predicts (Dream: from the one before)
            shift = int(self.params.config.logits_shift)
            hidden = jax.lax.dynamic_slice_in_dim(out.hidden, block_start - shift - query_start, self.block_length,
                                                  axis=1)
        if not self.probs_layers:
            return ForwardView(logits=out.logits, fresh=fresh, hidden=hidden)
        probs = sum(out.attn_probs) / len(out.attn_probs)  # [B, T, L]: mean over the layers of the head means
        attention = jax.lax.dynamic_slice_in_dim(probs, block_start - query_start, self.block_length, axis=1)
        if query_mask is None:
            column_mean = probs.mean(axis=1)
        else:
            weight = query_mask[:, :, None].astype(probs.dtype)
            column_mean = (probs * weight).sum(axis=1) / weight.sum(axis=1)
        return ForwardView(logits=out.logits, fresh=fresh, attention=attention, column_mean=column_mean,
                           hidden=hidden)


@flax.struct.dataclass
class ForwardView:
    """What one forward pass tells the step. B batch (2B with guidance), W block, L sequence, S the span's length
    (`SequenceInputs.span`: W, G or L).

    logits:      [B, S, V] of the span's positions, meaningful where `fresh`.
    fresh:       [S] bool, the positions this forward computed (always the whole block).
    attention:   [B, W, L] float32, the block's queries over every key: softmax probabilities averaged over heads
                 and over `probs_layers`; None unless layers were asked for.
    column_mean: [B, L] float32, each key's attention averaged over the forward's (real) queries: all of them on a
                 full forward, the window's on a cached one; None unless layers were asked for.
    hidden:      [B, W, D] the block's final hidden states before the final norm, index i holding the state that
                 predicts block position i; None unless `SequenceInputs.hidden`.
    """

    logits: jax.Array
    fresh: jax.Array
    attention: jax.Array | None = None
    column_mean: jax.Array | None = None
    hidden: jax.Array | None = None

    def block(self, offset, width: int) -> jax.Array:
        """The current block's logits [B, W, V]; offset: the block's start in the span."""
        return jax.lax.dynamic_slice_in_dim(self.logits, offset, width, axis=1)

    def tail(self, offset: int) -> "ForwardView":
        """The view of the span from `offset` on (static), logits and fresh only: the generation of a sequence."""
        return ForwardView(logits=self.logits[:, offset:], fresh=self.fresh[offset:])


def empty_cache(params: Params, batch: int, length: int) -> KVCache:
    """Zeroed keys/values [B, L, K, H] per layer, in the model dtype."""
    c = params.config
    zeros = tuple(jnp.zeros((batch, length, c.n_kv_heads, c.head_dim), params.dtype) for _ in range(c.n_layers))
    return KVCache(k=zeros, v=zeros)


@part
class NoCache:
    """Every step runs the model over the whole sequence (exact; the reference behaviour)."""

    refresh_every = None
    refresh_at_block_start = True  # the loop's refresh flag after a block ends (a cache part may keep it off)
    reuses_keys = False  # every forward is full: the refresh flag says nothing (DecodeState.full_forwards)

    def init(self, params: Params, batch: int, length: int) -> None:
        return None

    def block_logits(self, seq: SequenceInputs, tokens, kv, refresh, block_start):
        view, _ = seq.full(tokens, block_start, return_cache=False)
        return view, kv


@part
class RefreshingCache:
    """A cache rebuilt by a full forward at every block start.

    refresh_every: also rebuild it every this many steps inside a block (None: only at block starts). 1 rebuilds it
    at every step, which makes the cached decode exact (and as slow as no cache). Static.
    """

    refresh_every: int | None = None
    refresh_at_block_start = True  # rebuilt at every block start; FreeCache keeps its frozen prefix instead
    reuses_keys = True  # a forward is full exactly when the loop's refresh flag is set, a window otherwise

    def __post_init__(self):
        if self.refresh_every is not None and (not isinstance(self.refresh_every, int) or self.refresh_every <= 0):
            raise StrategyError(f"refresh_every must be a positive integer or None, got {self.refresh_every!r}")

    def init(self, params: Params, batch: int, length: int) -> KVCache:
        return empty_cache(params, batch, length)
