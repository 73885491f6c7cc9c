"""Turning logits into proposed tokens: LLaDA's Gumbel-max and Dream's filtered sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def per_row(sample, keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Random numbers [B, *shape], row b drawn from `keys[b]` alone, so a row's randomness does not depend on
    which batch it is decoded in. `sample` is e.g. `jax.random.uniform`."""
    return jax.vmap(lambda k: sample(k, shape))(keys)


def gumbel_argmax(logits: jax.Array, temperature: jax.Array | None, keys: jax.Array) -> jax.Array:
    """LLaDA `add_gumbel_noise` + argmax: `argmax(logits + T * g)`, g standard Gumbel; plain argmax when greedy.

    logits [B, W, V] float32, temperature None (greedy) or [] float32, keys [B] -> tokens [B, W] int32.
    (`exp(l) / (-log u)^T` in the reference is this same argmax.)
    """
    if temperature is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    g = per_row(jax.random.gumbel, keys, logits.shape[1:])
    return jnp.argmax(logits + temperature * g, axis=-1).astype(jnp.int32)


def token_probability(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Softmax probability of `tokens` [B, W] under `logits` [B, W, V] (float32)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.exp(jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0])


def filter_top_p(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Dream's nucleus filter: keep a token iff the probability mass ranked before it is <= top_p (traced)."""
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = cum > top_p
    remove_sorted = jnp.concatenate([jnp.zeros_like(remove_sorted[..., :1]), remove_sorted[..., :-1]], axis=-1)
    remove = jnp.take_along_axis(remove_sorted, jnp.argsort(order, axis=-1), axis=-1)  # back to vocab order
    return jnp.where(remove, jnp.finfo(logits.dtype).min, logits)


def filter_top_k(logits: jax.Array, top_k: int) -> jax.Array:
    """Dream's top-k filter: keep every token at least as large as the k-th largest (ties kept)."""
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    return jnp.where(logits < kth, jnp.finfo(logits.dtype).min, logits)


def dream_distribution(logits: jax.Array, temperature: jax.Array | None, top_p: jax.Array | None,
                       top_k: int | None) -> jax.Array:
    """Dream `sample_tokens` before sampling: temperature (None: greedy), top-p, top-k, softmax -> probs [B, W, V].

    top_p None means no nucleus filter (Dream skips it at top_p >= 1 too: `DreamRule` maps that to None).
    """
    if temperature is not None:
        logits = logits / temperature
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    return jax.nn.softmax(logits, axis=-1)


def dream_propose(probs: jax.Array, temperature: jax.Array | None, keys: jax.Array) -> jax.Array:
    """Greedy argmax (temperature None), else a sample from `probs` [B, W, V] (keys [B]): tokens [B, W] int32."""
    if temperature is None:
        return jnp.argmax(probs, axis=-1).astype(jnp.int32)
    g = per_row(jax.random.gumbel, keys, probs.shape[1:])
    return jnp.argmax(jnp.log(probs) + g, axis=-1).astype(jnp.int32)
