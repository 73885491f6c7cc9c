"""ASRD's anchor tokens: found by temporal consistency, kept in a cache, injected into the masked inputs, and the
orthogonal perturbations its verification applies. Pure functions on arrays; `asrd.py` composes them."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from jdlm.decoding.proposals import per_row


@flax.struct.dataclass
class AnchorCache:
    """Per generated position, what the last forward that saw it predicted. B batch, G generation length.

    prediction: [B, G] int32    the latest argmax (the position's own row while masked, its twin's once decoded;
                                -1: never seen).
    streak:     [B, G] int32    consecutive steps that predicted `prediction` with confidence >= anchor_confidence.
    anchor:     [B, G] bool     in the cache: decoded, its token equals a prediction held for >= anchor_window steps.
    entropy:    [B, G] float32  normalised entropy (0..1) of the position's last distribution while masked (1: never
                                seen).
    """

    prediction: jax.Array
    streak: jax.Array
    anchor: jax.Array
    entropy: jax.Array

    @classmethod
    def empty(cls, batch: int, length: int) -> AnchorCache:
        return cls(prediction=jnp.full((batch, length), -1, jnp.int32), streak=jnp.zeros((batch, length), jnp.int32),
                   anchor=jnp.zeros((batch, length), bool), entropy=jnp.ones((batch, length), jnp.float32))


def track(cache: AnchorCache, prediction, confidence, entropy, masked, tokens, decoded, offset, window,
          min_confidence) -> AnchorCache:
    """The cache after one step over the block [offset, offset + W) of the generation (the rest is kept).

    prediction / confidence: [B, W] this step's argmax and its probability per block position; entropy: [B, W]
    normalised entropy of the position's own row; masked: [B, W] before the step's writes; tokens / decoded: [B, W]
    after them. A streak grows while the prediction repeats with confidence >= min_confidence, restarts at 1 on a
    new confident prediction and drops to 0 on an unconfident one; an anchor is a decoded position whose token is a
    prediction held for >= `window` steps, and it leaves the cache as soon as that stops being true.

    Example, window 2, min_confidence 0.9 (one position, revealed as 7 at step 0):
        step          0      1      2      3
        prediction    7      7      7      4
        confidence   .95    .97    .92    .96
        streak        1      2      3      1
        anchor        F      T      T      F
    """
    W = prediction.shape[1]

    def block(x):
        return jax.lax.dynamic_slice_in_dim(x, offset, W, axis=1)

    def put(x, value):
        return jax.lax.dynamic_update_slice_in_dim(x, value, offset, axis=1)

    sure = confidence >= min_confidence
    streak = jnp.where(sure, jnp.where(prediction == block(cache.prediction), block(cache.streak) + 1, 1), 0)
    anchor = decoded & (streak >= window) & (prediction == tokens)
    return AnchorCache(prediction=put(cache.prediction, prediction), streak=put(cache.streak, streak),
                       anchor=put(cache.anchor, anchor),
                       entropy=put(cache.entropy, jnp.where(masked, entropy, block(cache.entropy))))


def normalised_entropy(logits: jax.Array) -> jax.Array:
    """Entropy of softmax(logits) over log(V): [B, W, V] -> [B, W] in [0, 1] (-inf logits take no part)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    h = -jnp.sum(jnp.where(jnp.isfinite(logp), jnp.exp(logp) * logp, 0.0), axis=-1)
    return h / jnp.log(logits.shape[-1])


def injection_weights(anchor: jax.Array, queries: jax.Array, distance) -> jax.Array:
    """w_ma: for each query position m, a softmax over the anchors a of -|m - a| / distance; zero without anchors.

    anchor: [B, G] bool; queries: [W] generation positions -> [B, W, G] float32, rows summing to 1 (or 0).
    Example, anchors at 0 and 3, query 1, distance 1: weights e^-1 / (e^-1 + e^-2) = 0.73 and 0.27.
    """
    G = anchor.shape[1]
    score = -jnp.abs(queries[:, None] - jnp.arange(G)[None, :]).astype(jnp.float32) / distance  # [W, G]
    score = jnp.where(anchor[:, None, :], score[None], -jnp.inf)
    has = anchor.any(-1)[:, None, None]
    return jnp.where(has, jax.nn.softmax(jnp.where(has, score, 0.0), axis=-1), 0.0)


def orthogonal_noise(keys: jax.Array, embeddings: jax.Array) -> jax.Array:
    """Unit vectors orthogonal to each embedding, in a random direction: keys [B], embeddings [B, W, D]
    -> [B, W, D] float32. A Gaussian draw with its component along the embedding removed, then normalised."""
    e = embeddings.astype(jnp.float32)
    r = per_row(jax.random.normal, keys, e.shape[1:])
    tiny = jnp.finfo(jnp.float32).tiny
    unit = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), tiny)
    r = r - jnp.sum(r * unit, axis=-1, keepdims=True) * unit
    return r / jnp.maximum(jnp.linalg.norm(r, axis=-1, keepdims=True), tiny)
