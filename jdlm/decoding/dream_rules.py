"""Shared base of Dream's confidence rules (MaskGitPlus, Margin, Entropy): proposal and position sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdlm.decoding.part import derived, knob, part
from jdlm.decoding.proposals import dream_distribution, dream_propose, per_row
from jdlm.decoding.rule import Rule, top_count
from jdlm.errors import StrategyError


@part
class DreamRule(Rule):
    """Dream `_sample` (HKUNLP generation_utils.py): filtered proposals, a confidence from the distribution.

    Attributes:
      top_p: nucleus filter (None or 1 = off); applied at temperature 0 too, where it changes confidences. Traced;
        on or off is static.
      top_k: top-k filter (None = off), ties with the k-th kept. Static (it sets a shape).
      alg_temp: 0 reveals the `count` most confident positions; > 0 samples `count` positions without
        replacement from softmax(confidence / alg_temp) (Gumbel top-k). Traced; 0 or > 0 is static.
    """

    top_p: float | None = knob(None)
    top_k: int | None = None
    alg_temp: float = knob(0.0)
    nucleus: bool = derived()  # top_p filters (top_p < 1)
    samples_positions: bool = derived()  # alg_temp > 0

    def __post_init__(self):
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise StrategyError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k <= 0):
            raise StrategyError(f"top_k must be a positive integer, got {self.top_k!r}")
        if not 0 <= self.alg_temp < float("inf"):
            raise StrategyError(f"alg_temp must be a finite number >= 0, got {self.alg_temp}")
        object.__setattr__(self, "nucleus", self.top_p is not None and self.top_p < 1)
        object.__setattr__(self, "samples_positions", self.alg_temp > 0)

    def confidence_from(self, probs: jax.Array, tokens: jax.Array) -> jax.Array:
        """Confidence [B, W] from the filtered distribution probs [B, W, V] and the proposals [B, W]."""
        raise NotImplementedError

    def distribution(self, logits, temperature):
        """Dream's filtered distribution probs [B, W, V]."""
        return dream_distribution(logits, temperature, self.top_p if self.nucleus else None, self.top_k)

    def propose(self, logits, temperature, key):
        probs = self.distribution(logits, temperature)
        tokens = dream_propose(probs, temperature, key)
        return tokens, self.confidence_from(probs, tokens)

    def select(self, confidence, candidates, budget, key):
        if not self.samples_positions:
            return top_count(confidence, candidates, budget.count)
        noisy = confidence / self.alg_temp + per_row(jax.random.gumbel, key, confidence.shape[1:])
        return top_count(jnp.where(candidates, noisy, -jnp.inf), candidates, budget.count)
