"""Asrd: anchor supervised revocable decoding (arXiv 2606.16847), jdlm's design on WINO's draft and verification."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdlm.decoding.anchors import (
    AnchorCache,
    injection_weights,
    normalised_entropy,
    orthogonal_noise,
    track,
)
from jdlm.decoding.part import knob, part
from jdlm.decoding.revocable import Revocable, RevocableMemory
from jdlm.errors import StrategyError


# No code of ASRD is public and only its abstract could be read: every formula below is jdlm's choice
# (REFERENCE.md 3.2, docs/decoding.md "Revocable decoding"), measured by scripts/eval_revocable.py.
@part
class Asrd(Revocable):
    """WINO (`Wino`: one forward over the sequence and the block's shadow twins, wide draft, narrow verification,
    re-masking) with anchor tokens that guide the draft and supervise the verification.

    Anchors (temporal consistency, `anchors.track`): every step each block position gets a prediction, its own
    row's argmax while masked and its twin's once decoded; a streak counts the consecutive steps that repeated it
    with probability >= `anchor_confidence`. A decoded position whose token is a prediction held for >=
    `anchor_window` steps is an anchor; it leaves the cache when the streak breaks. Anchors of finished blocks stay.
    Anchors are never re-masked.

    Anchor-guided generation (the forward's extra input embedding): each masked block position m gets
    `injection * H_m * sum_a w_ma E[x_a]`, H_m the normalised entropy of m's distribution at the previous step (1
    before its first), w_ma a softmax over the anchors a of -|m - a| / `anchor_distance` (`injection_weights`).

    Anchor-perturbed verification, in the same forward: each decoded non-anchor block position c gets
    `perturbation * |E[x_c]| * u`, u a random unit vector orthogonal to E[x_c] (a fresh draw every step), so a
    candidate that only other uncertain candidates support loses that support in its twin's view; the twins and
    the anchors stay clean. A candidate whose twin gives it probability < `threshold_back` goes back to the mask
    (WINO's rule, including its `last_accept` limit). The drafts read the same perturbed forward.

    One forward a step (NFE = steps), of L + W tokens like WINO: the verification adds W tokens to every forward,
    not a pass of its own. With `injection` 0, `perturbation` 0 and an `anchor_window` no streak reaches, Asrd is
    Wino token for token.
    """

    anchor_window: int = knob(3)
    anchor_confidence: float = knob(0.9)
    injection: float = knob(0.1)
    anchor_distance: float = knob(8.0)
    perturbation: float = knob(0.1)

    def __post_init__(self):
        super().__post_init__()
        if self.anchor_window < 1 or self.anchor_window != int(self.anchor_window):
            raise StrategyError(f"anchor_window must be an integer >= 1 (steps), got {self.anchor_window}")
        if not 0 <= self.anchor_confidence <= 1:
            raise StrategyError(f"anchor_confidence must be in [0, 1], got {self.anchor_confidence}")
        if self.anchor_distance <= 0:
            raise StrategyError(f"anchor_distance must be > 0 (positions), got {self.anchor_distance}")
        for name in ("injection", "perturbation"):
            if getattr(self, name) < 0:
                raise StrategyError(f"{name} must be >= 0, got {getattr(self, name)}")

    def init_extra(self, batch, length):
        return AnchorCache.empty(batch, length)

    def protected(self, memory: RevocableMemory, offset, width):
        return jax.lax.dynamic_slice_in_dim(memory.extra.anchor, offset, width, axis=1)

    def extra_embed(self, params, tokens, memory: RevocableMemory, block_start, offset, width, key):
        cache: AnchorCache = memory.extra
        embed = params.weights["embed"]  # [V, D]
        B, L = tokens.shape
        G = cache.anchor.shape[1]
        block = jax.lax.dynamic_slice_in_dim(tokens, block_start, width, axis=1)  # [B, W]
        masked = block == params.config.mask_id
        anchored = self.protected(memory, offset, width)
        generated = jnp.take(embed, tokens[:, L - G:], axis=0).astype(jnp.float32)  # [B, G, D]
        weights = injection_weights(cache.anchor, offset + jnp.arange(width), self.anchor_distance)  # [B, W, G]
        signal = jnp.einsum("BWG,BGD->BWD", weights, generated)
        entropy = jax.lax.dynamic_slice_in_dim(cache.entropy, offset, width, axis=1)
        guide = (self.injection * entropy * masked)[..., None] * signal
        own = jnp.take(embed, block, axis=0).astype(jnp.float32)  # [B, W, D]
        size = self.perturbation * jnp.linalg.norm(own, axis=-1) * (~masked & ~anchored)  # [B, W]
        extra_block = guide + size[..., None] * orthogonal_noise(key, own)
        extra = jnp.zeros((B, L + width, embed.shape[1]), jnp.float32)
        return jax.lax.dynamic_update_slice_in_dim(extra, extra_block, block_start, axis=1)

    def observe(self, memory: RevocableMemory, block, twins, masked, tokens, decoded, offset):
        seen = jnp.where(masked[..., None], block, twins)  # [B, W, V]: own row while masked, the twin's once decoded
        prediction = jnp.argmax(seen, axis=-1).astype(jnp.int32)
        confidence = jnp.exp(jnp.max(seen, axis=-1) - jax.nn.logsumexp(seen, axis=-1))
        return track(memory.extra, prediction, confidence, normalised_entropy(block), masked, tokens, decoded,
                     offset, self.anchor_window, self.anchor_confidence)
