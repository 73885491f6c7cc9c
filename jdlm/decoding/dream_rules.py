"""Shared base of Dream's confidence rules (MaskGitPlus, Margin, Entropy): proposal and position sampling."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdlm.decoding.proposals import dream_distribution, dream_propose, per_row
from jdlm.decoding.rule import Rule, top_count
from jdlm.decoding.schedule import StrategyError


@dataclasses.dataclass(frozen=True, kw_only=True)
class DreamRule(Rule):
    """Dream `_sample` (HKUNLP generation_utils.py): filtered proposals, a confidence from the distribution.

    Attributes:
      top_p: nucleus filter (None or 1 = off); applied at temperature 0 too, where it changes confidences.
      top_k: top-k filter (None = off), ties with the k-th kept.
      alg_temp: 0 reveals the `count` most confident positions; > 0 samples `count` positions without
        replacement from softmax(confidence / alg_temp) (Gumbel top-k).
    """

    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float = 0.0

    def __post_init__(self):
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise StrategyError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k <= 0:
            raise StrategyError(f"top_k must be positive, got {self.top_k}")
        if not self.alg_temp >= 0:
            raise StrategyError(f"alg_temp must be >= 0, got {self.alg_temp}")

    def confidence_from(self, probs: jax.Array, tokens: jax.Array) -> jax.Array:
        """Confidence [B, W] from the filtered distribution probs [B, W, V] and the proposals [B, W]."""
        raise NotImplementedError

    def propose(self, logits, temperature, key):
        probs = dream_distribution(logits, temperature, self.top_p, self.top_k)
        tokens = dream_propose(probs, temperature, key)
        return tokens, self.confidence_from(probs, tokens)

    def select(self, confidence, candidates, count, key):
        if self.alg_temp == 0:
            return top_count(confidence, candidates, count)
        noisy = confidence / self.alg_temp + per_row(jax.random.gumbel, key, confidence.shape[1:])
        return top_count(jnp.where(candidates, noisy, -jnp.inf), candidates, count)
