"""The base of every reveal rule, and the selection helpers the rules share."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule:
    """Decides which masked positions of the current block are revealed at a step, and with which tokens.

    A rule is a frozen, hashable dataclass of hyperparameters (static under jit) with two pure methods. Shapes:
    W is the block length; logits are float32 [B, W, V] for the block's positions.
    """

    counted: ClassVar[bool] = True  # reveals the schedule's count each step; False: decides how many itself

    def propose(self, logits: jax.Array, temperature: float, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Proposed token [B, W] int32 and confidence [B, W] float32 (higher = reveal sooner) per position.

        `key` holds one PRNG key per row ([B]); draw each row's randomness from its own key (`per_row`).
        """
        raise NotImplementedError

    def select(self, confidence: jax.Array, candidates: jax.Array, count: jax.Array, key: jax.Array) -> jax.Array:
        """Positions to reveal [B, W] bool among `candidates` (masked positions of the block, [B, W] bool).

        `confidence` is -inf outside the candidates; `count` (int32 scalar) is the schedule's count for this step.
        """
        return top_count(confidence, candidates, count)


def top_count(confidence: jax.Array, candidates: jax.Array, count: jax.Array) -> jax.Array:
    """The `count` most confident candidates per row; ties go to the lowest position (as `lax.top_k`).

    Example, count = 2:   confidence [.9, .2, .9, .5]  ->  reveal [T, F, T, F]
    """
    order = jnp.argsort(-confidence, axis=-1, stable=True)  # [B, W] positions, best first
    rank = jnp.argsort(order, axis=-1, stable=True)  # [B, W] rank of each position
    return candidates & (rank < count)


def best_one(confidence: jax.Array, candidates: jax.Array) -> jax.Array:
    """The single most confident candidate per row (lowest position on ties); none if a row has no candidate."""
    best = jnp.argmax(jnp.where(candidates, confidence, NEG_INF), axis=-1)  # [B]
    return candidates & (jnp.arange(confidence.shape[-1]) == best[:, None])
