"""WINO's shadow block: one forward pass that drafts the block and verifies its decoded tokens.

The forward runs over T = L + W tokens: the sequence, then W shadow slots that always hold the mask id. Shadow slot
j is the twin of block position s + j and sits at its rotary position; it sees every real position but its twin,
and every shadow slot, so its output is the model's prediction for position s + j with that position masked while
everything else stays as decoded. Real positions never see the shadow, so their rows are an ordinary forward:

    keys ->            real (0 .. L-1)              shadow (L .. L+W-1)
    real query       all                          none
    shadow query j   all but its twin s + j       all

`T` and the mask depend only on the block start s, so shapes stay static. Feng-Hong/WINO-DLLM
`LLaDA/decoding.py::decoding_wino` builds the same mask (REFERENCE.md section 3.2.1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdlm.decoding.cache import SequenceInputs
from jdlm.model import forward, lm_head


def shadow_mask(L: int, W: int, block_start) -> jax.Array:
    """[1, L + W, L + W] bool: which keys each query (real, then shadow) may attend to (table above)."""
    T = L + W
    idx = jnp.arange(T)
    shadow_key = idx >= L  # [T]
    twin = jnp.where(shadow_key, block_start + idx - L, -1)  # [T] the real position a shadow query stands for
    real_rows = ~shadow_key[None, :]
    shadow_rows = shadow_key[None, :] | (idx[None, :] != twin[:, None])
    return jnp.where(shadow_key[:, None], shadow_rows, real_rows)[None]


def shadow_logits(seq: SequenceInputs, tokens: jax.Array, block_start, mask_id: int,
                  extra_embed: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The block's logits and its twins' logits, float32 [B, W, V] each, with the mask token excluded.

    tokens: [B, L] the sequence; extra_embed: [B, L + W, D] added to the input embeddings (ASRD), or None.
    Unshifted models only (a Dream twin would have to predict from its neighbour's slot).
    """
    B, L = tokens.shape
    W = seq.block_length
    ext = jnp.concatenate([tokens, jnp.full((B, W), mask_id, tokens.dtype)], axis=1)  # [B, T]
    twin_positions = jax.lax.dynamic_slice_in_dim(seq.positions, block_start, W, axis=1)
    positions = jnp.concatenate([seq.positions, twin_positions], axis=1)
    key_mask = None if seq.key_mask is None else jnp.concatenate([seq.key_mask, jnp.ones((B, W), bool)], axis=1)
    out = forward(seq.params, ext, positions=positions, key_mask=key_mask, attn_mask=shadow_mask(L, W, block_start),
                  extra_embed=extra_embed, logits_slice=(L, W), return_hidden=True)
    block = lm_head(seq.params, jax.lax.dynamic_slice_in_dim(out.hidden, block_start, W, axis=1))
    # Never propose the mask token itself (as the shared step), nor count its mass in a twin's probabilities.
    return tuple(x.astype(jnp.float32).at[..., mask_id].set(-jnp.inf) for x in (block, out.logits))
