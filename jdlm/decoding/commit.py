"""The base of every commit part (early, all-in commits such as Prophet), and what the step keeps for them.

A commit part looks at every generated position after each forward pass, before the rule's reveal, and may decide
that a row is finished: then every masked position of that row's generation gets its proposal at once, the rule's
reveal is skipped, and the row stops. The step keeps, per generated position, what the last forward that computed
it said (`Latest`): without a cache every position is computed at every step; with a cache only the block (and, for
the prefix cache, what follows it) is recomputed between the block's first steps, so the rest is read from there.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from jdlm.decoding.part import part


@part
class Commit:
    """Decides after each forward pass whether a row commits all its remaining masked positions now.

    A commit part is a strategy part (see `part`): numeric fields traced, two pure methods. G is the generation
    length, V the vocabulary.
    """

    def check_schedule(self, schedule) -> None:
        """Raises StrategyError if this part cannot run with `schedule`."""

    def statistic(self, logits: jax.Array) -> jax.Array:
        """A number per generated position from its logits: [B, G, V] float32 -> [B, G] float32. The step keeps
        each position's latest value (`Latest.statistic`)."""
        raise NotImplementedError

    def fires(self, statistic: jax.Array, progress: jax.Array) -> jax.Array:
        """[B] bool: commit everything now. statistic [B, G] (latest per position); progress [B] float32, the
        row's forward passes including this one over the schedule's `steps`."""
        raise NotImplementedError


@flax.struct.dataclass
class Latest:
    """Per generated position, what the last forward pass that computed it said. B batch, G generation length.

    token:      [B, G] int32    the rule's proposal.
    confidence: [B, G] float32  the rule's confidence in it.
    statistic:  [B, G] float32  the commit part's statistic (`Commit.statistic`).
    """

    token: jax.Array
    confidence: jax.Array
    statistic: jax.Array

    @classmethod
    def empty(cls, batch: int, length: int) -> "Latest":
        # Never read before it is written: the first step of every decode runs a full forward pass.
        return cls(token=jnp.zeros((batch, length), jnp.int32), confidence=jnp.zeros((batch, length), jnp.float32),
                   statistic=jnp.zeros((batch, length), jnp.float32))

    def update(self, fresh: jax.Array, token: jax.Array, confidence: jax.Array, statistic: jax.Array) -> "Latest":
        """Replaced where `fresh` ([G] bool: computed by this forward pass), kept elsewhere."""
        new = Latest(token=token, confidence=confidence, statistic=statistic)
        return jax.tree.map(lambda n, o: jnp.where(fresh, n, o), new, self)
