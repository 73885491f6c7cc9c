"""The base of every reveal rule, and the selection helpers the rules share."""

from __future__ import annotations

from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from jdlm.decoding.part import part

NEG_INF = -jnp.inf


@flax.struct.dataclass
class Budget:
    """What the schedule allows at this step: count [] int32 (tokens to reveal, counted rules) and fraction []
    float32 (probability of revealing each masked position, rules that reveal positions independently)."""

    count: jax.Array
    fraction: jax.Array


@part
class Rule:
    """Decides which masked positions of the current block are revealed at a step, and with which tokens.

    A rule is a strategy part (see `part`): a frozen dataclass whose numeric fields are traced under jit, with two
    pure methods. Shapes: W is the block length; logits are float32 [B, W, V] for the block's positions.
    """

    counted: ClassVar[bool] = True  # runs the schedule's steps; False: reveals >= 1 a step until the block is done

    def propose(self, logits: jax.Array, temperature: jax.Array | None, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Proposed token [B, W] int32 and confidence [B, W] float32 (higher = reveal sooner) per position.

        `temperature` is None for greedy decoding (static), else the traced temperature. `key` holds one PRNG key
        per row ([B]); draw each row's randomness from its own key (`per_row`).
        """
        raise NotImplementedError

    def for_model(self, config) -> "Rule":
        """This rule with what it needs of the model filled in (special token ids); called on the host by `decode`.
        Most rules need nothing."""
        return self

    def check_schedule(self, schedule) -> None:
        """Raises StrategyError if this rule cannot run with `schedule`."""

    def select(self, confidence: jax.Array, candidates: jax.Array, budget: Budget, key: jax.Array) -> jax.Array:
        """Positions to reveal [B, W] bool among `candidates` (masked positions of the block, [B, W] bool).

        `confidence` is -inf outside the candidates; `budget` is this step's share of the schedule.
        """
        return top_count(confidence, candidates, budget.count)


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
