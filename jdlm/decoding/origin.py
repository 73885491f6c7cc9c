"""Origin: Dream alg="origin" (each masked position is revealed independently with probability 1 - s/t)."""

from __future__ import annotations

import jax

from jdlm.decoding.dream_rules import DreamRule
from jdlm.decoding.part import part
from jdlm.decoding.proposals import per_row
from jdlm.errors import StrategyError


@part
class Origin(DreamRule):
    """HKUNLP Dream `_sample` with alg="origin": at step i of `steps`, every masked position is revealed with
    probability `1 - t[i+1] / t[i]` (`t = linspace(1, eps, steps + 1)`), all that is left at the last step; the
    token is Dream's proposal (argmax when greedy, a sample otherwise, after top-p / top-k).

    Row b draws `u = uniform(key_b, (W,))` per step and reveals masked positions with `u < p` (the reference draws
    one uniform per masked position, in position order: feed it `u` at the masked positions to compare). Needs the
    Dream schedule (counts="dream", idle steps kept), which `jdlm.strategies.dream(alg="origin")` builds. alg_temp
    plays no part.
    """

    def check_schedule(self, schedule):
        if schedule.counts != "dream" or not schedule.keep_idle_steps:
            raise StrategyError("the origin rule reveals by Dream's time schedule: use counts='dream' with "
                                "keep_idle_steps=True (jdlm.strategies.dream(alg='origin') sets both)")

    def confidence_from(self, probs, tokens):
        return jax.numpy.zeros(tokens.shape, probs.dtype)  # unused: positions are chosen at random

    def select(self, confidence, candidates, budget, key):
        u = per_row(jax.random.uniform, key, confidence.shape[1:])  # [B, W]
        return candidates & (u < budget.fraction)
