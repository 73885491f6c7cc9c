"""FreeCache: FlashDLM's approximate key/value reuse (arXiv 2505.21467): a frozen prefix is never recomputed."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdlm.decoding.cache import RefreshingCache, SequenceInputs
from jdlm.decoding.part import part
from jdlm.decoding.prefix_cache import window_blocks
from jdlm.errors import StrategyError

POLICIES = ("prompt", "block", "boundary", "window")


@part
class FreeCache(RefreshingCache):
    """Keys/values of a frozen prefix `[0, clean)` are reused; each step feeds only `x[clean:]`, writes its fresh
    keys/values from `clean` on, and its queries attend to the frozen prefix and the fresh suffix. Only the first
    step of a decode is a full forward (and every `refresh_every` steps, when set); nothing left of `clean` is ever
    refreshed, which is the approximation. Where `clean` sits (`policy`):

        sequence   [ prompt | b0 | b1 | b2 | b3 ]      decoding b2, its first mask in b2's second half
        prompt     ........[ fed every step ........ ]   clean = P
        block      ..................[ fed ........ ]   clean = the decode block's start: a finished block keeps
                                                        the keys/values of its last step, some still masked
        boundary   ..................[ fed ........ ]   clean = the last `unit` boundary at or before each row's
                                                        first mask (authors: use_block_boundary_caching)
        window     ............[ fed .......... ] xxx   clean = block start - `window`; positions after block
                                                        end + `window` are dropped from the forward (keys masked)

    The authors' sliding window centres on the last decoded token; here it centres on the current decode block, so
    it moves in block units and one static window serves the batch (with blocks of one token it is theirs).
    A row with no masked position in the current block writes nothing (its keys/values stay those of its last
    decoding step), so a row decodes as it would alone. Suffix lengths come from `windows` static sizes in `unit`s
    (as `PrefixCache`); a larger size recomputes some frozen positions without keeping them.

    policy: one of "prompt", "block", "boundary", "window" (static).
    unit: granularity of "boundary" in tokens (default: the decode block length); must divide the generation.
    window: tokens recomputed on each side of the block for "window" (the authors' evaluator: 128).
    windows: number of static suffix sizes for "block" and "boundary" (each is one compiled copy of the forward).
    refresh_every: also run a full forward every this many steps of a block (1: exact, as slow as no cache).
    """

    policy: str = "block"
    unit: int | None = None
    window: int = 128
    windows: int = 2

    refresh_at_block_start = False  # the loop's refresh flag: only the first step (and refresh_every)

    def __post_init__(self):
        super().__post_init__()
        if self.policy not in POLICIES:
            raise StrategyError(f"FreeCache policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        for name in ("unit", "window", "windows"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise StrategyError(f"FreeCache {name} must be a positive integer, got {value!r}")

    def block_logits(self, seq: SequenceInputs, tokens, kv, refresh, block_start):
        return jax.lax.cond(refresh, lambda: seq.full(tokens, block_start, return_cache=True),
                            lambda: self._suffix(seq, tokens, kv, block_start))

    def _suffix(self, seq: SequenceInputs, tokens, kv, block_start):
        """The cached forward of one step: fresh keys/values from each row's `clean` on."""
        L = tokens.shape[1]
        P, W = seq.prompt_len, seq.block_length
        shift = int(seq.params.config.logits_shift)  # Dream: the slot before `clean` predicts its first token
        mask_id = seq.params.config.mask_id
        block = jax.lax.dynamic_slice_in_dim(tokens, block_start, W, axis=1)
        decoding = (block == mask_id).any(-1)  # [B']: rows that still decode this block write keys/values
        if self.policy == "window":
            size = min(L, 2 * self.window + W)
            start = jnp.clip(block_start - self.window, 0, L - size)
            keep = jnp.arange(L) < start + size  # [L]: later positions are dropped
            key_mask = keep[None, :] if seq.key_mask is None else seq.key_mask & keep
            key_mask = jnp.broadcast_to(key_mask, tokens.shape)
            write = jnp.where(decoding, start, L)
            return seq.window(tokens, kv, start, size, block_start, write_from=write, key_mask=key_mask)
        clean = self.clean(tokens, P, W, block_start, mask_id)  # [B']
        if self.policy == "prompt":
            size = L - P + shift
            return seq.window(tokens, kv, L - size, size, block_start, write_from=jnp.where(decoding, P, L))
        unit = self.unit_for(W, L - P)
        # Sizes that cannot hold the block never serve (the bucket reaches back to the block at least).
        sizes = tuple(n for n in window_blocks((L - P) // unit, self.windows) if n * unit >= W)
        # The window reaches back to the earliest boundary of a row that decodes, and to the block (whose logits
        # it returns) when a boundary lies inside it.
        lowest = jnp.minimum(jnp.where(decoding, clean, L).min(), block_start)
        needed = (L - lowest + unit - 1) // unit
        choice = jnp.minimum(jnp.searchsorted(jnp.asarray(sizes), needed), len(sizes) - 1)
        write = jnp.where(decoding, clean, L)

        def window(units: int):
            size = min(units * unit + shift, L)
            return lambda: seq.window(tokens, kv, L - size, size, block_start, write_from=write)

        return jax.lax.switch(choice, [window(n) for n in sizes])

    def unit_for(self, block_length: int, gen_length: int) -> int:
        """The boundary granularity in tokens (static); the decode block for "block"."""
        unit = block_length if self.policy == "block" or self.unit is None else self.unit
        if gen_length % unit:
            raise StrategyError(f"FreeCache unit {unit} must divide the generation length {gen_length}")
        return unit

    def clean(self, tokens, prompt_len: int, block_length: int, block_start, mask_id: int) -> jax.Array:
        """[B] int32: where each row's frozen prefix ends (the policies above; "window" is handled by its caller).

        tokens [B, L]; the boundary of a row with no mask left is L."""
        B, L = tokens.shape
        if self.policy == "prompt":
            return jnp.full((B,), prompt_len, jnp.int32)
        if self.policy == "block":
            return jnp.full((B,), block_start, jnp.int32)
        unit = self.unit_for(block_length, L - prompt_len)
        masked = tokens[:, prompt_len:] == mask_id  # [B, G]
        first = jnp.where(masked.any(-1), jnp.argmax(masked, axis=-1), L - prompt_len)
        return jnp.minimum(prompt_len + first // unit * unit, L).astype(jnp.int32)
