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


@flax.struct.dataclass
class Context:
    """What a rule that reads attention (`Rule.attention_layers` > 0) sees besides the block's confidences. B batch,
    W block, L sequence.

    attention:      [B, W, L] float32  the block's queries over every key, averaged over heads and the last layers.
    column_mean:    [B, L] float32     each key's attention averaged over the forward's queries (attention sinks).
    key_confidence: [B, L] float32     the top softmax probability at each position the forward computed (0 at the
                                       positions a cached forward did not recompute).
    masked:         [B, L] bool        positions not revealed yet.
    block_start:    [] int32           where the block starts in the sequence.
    step_in_block:  [] int32           steps taken in the block before this one.
    """

    attention: jax.Array
    column_mean: jax.Array
    key_confidence: jax.Array
    masked: jax.Array
    block_start: jax.Array
    step_in_block: jax.Array

    def block_keys(self, per_key: jax.Array) -> jax.Array:
        """The block's columns of a per-key array [B, ..., L] -> [B, ..., W]."""
        return jax.lax.dynamic_slice_in_dim(per_key, self.block_start, self.attention.shape[1], axis=-1)


@part
class Rule:
    """Decides which masked positions of the current block are revealed at a step, and with which tokens.

    A rule is a strategy part (see `part`): a frozen dataclass whose numeric fields are traced under jit, with two
    pure methods. Shapes: W is the block length; logits are float32 [B, W, V] for the block's positions.
    """

    counted: ClassVar[bool] = True  # runs the schedule's steps; False: reveals >= 1 a step until the block is done
    # > 0: the rule reads the attention of the model's last this-many layers, and `select_attending` runs instead
    # of `select` (a rule sets it as a static field).
    attention_layers: ClassVar[int] = 0
    # True: the rule may send revealed positions back to the mask and runs its own step (`decode_step`, see
    # jdlm/decoding/revocable.py: WINO, ASRD) in place of the shared one.
    revocable: ClassVar[bool] = False

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

    def check_strategy(self, strategy) -> None:
        """Raises StrategyError if this rule cannot run with the strategy's other parts (cache, guidance, commit)."""

    def select(self, confidence: jax.Array, candidates: jax.Array, budget: Budget, key: jax.Array) -> jax.Array:
        """Positions to reveal [B, W] bool among `candidates` (masked positions of the block, [B, W] bool).

        `confidence` is -inf outside the candidates; `budget` is this step's share of the schedule.
        """
        return top_count(confidence, candidates, budget.count)

    def init_memory(self, batch: int, length: int):
        """What a rule carries from step to step (a pytree of [B, ...] arrays), or None; `length` is the generation
        length G, for rules that keep something per generated position (the revocable ones)."""
        return None

    def select_attending(self, confidence: jax.Array, candidates: jax.Array, budget: Budget, key: jax.Array,
                         context: Context, memory) -> tuple[jax.Array, object]:
        """`select` for rules that read attention: positions to reveal [B, W] bool, and the memory for the next
        step. Called only when `attention_layers` > 0."""
        raise NotImplementedError


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
