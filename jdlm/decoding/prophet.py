"""Prophet: commit everything at once when the answer region's top-1/top-2 logit gap is wide (early commit)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdlm.decoding.commit import Commit
from jdlm.decoding.part import knob, part
from jdlm.errors import StrategyError


# Behaviour follows pixeli99/Prophet generate_earlyexit.py (`generate`, `should_early_exit`) at commit 460afe4.
@part
class Prophet(Commit):
    """After each forward pass, the gap of a row is the mean over its answer region of `top1 - top2` of the logits
    (after guidance; masked and already decoded positions alike). When the gap reaches the threshold of the current
    phase, every masked position of the row's generation gets its proposal from this forward pass and the row stops:
    the step's own reveal is skipped, and the forward pass counts once (NFE = the step index g).

    Phases by progress = g / steps (g counts the row's forward passes from 1, including this one; `steps` is the
    schedule's, also for rules that pick their own count): progress < mid_from -> early_gap, < late_from -> mid_gap,
    else late_gap.

    Attributes (all traced: a sweep compiles once):
      early_gap, mid_gap, late_gap: gap thresholds of the three phases (upstream 7.5, 5.0, 2.5).
      mid_from, late_from: progress at which the mid and late phases start (upstream 0.33, 0.67).
      answer_start: first position of the answer region, counted from the generation's start (upstream takes an
        absolute position from the caller and checks only when one is given; its example uses P + 100).
      answer_length: positions in the region (upstream: 5), clipped to the generation.

    With a cache, positions that a step does not recompute keep their gap and proposal from the last forward that
    did (the block's first step is a full forward): the prefix cache recomputes the block and what follows, so only
    an answer region before the block is read from there; the dual cache recomputes only the block, so later
    blocks are filled with the proposals of the block's first step, as stale as its keys/values of them.
    """

    early_gap: float = knob(7.5)
    mid_gap: float = knob(5.0)
    late_gap: float = knob(2.5)
    mid_from: float = knob(0.33)
    late_from: float = knob(0.67)
    answer_start: int = knob(0)
    answer_length: int = knob(5)

    def __post_init__(self):
        for name in ("early_gap", "mid_gap", "late_gap", "mid_from", "late_from"):
            value = getattr(self, name)
            if not 0 <= value < float("inf"):
                raise StrategyError(f"prophet {name} must be a finite number >= 0, got {value}")
        if self.mid_from > self.late_from:
            raise StrategyError(f"prophet mid_from ({self.mid_from}) must not exceed late_from ({self.late_from})")
        if not isinstance(self.answer_start, int) or self.answer_start < 0:
            raise StrategyError(f"prophet answer_start must be an integer >= 0 (positions from the generation's "
                                f"start), got {self.answer_start!r}")
        if not isinstance(self.answer_length, int) or self.answer_length < 1:
            raise StrategyError(f"prophet answer_length must be a positive integer, got {self.answer_length!r}")

    def check_schedule(self, schedule):
        if self.answer_start >= schedule.gen_length:
            raise StrategyError(f"prophet answer_start ({self.answer_start}) lies past the generation "
                                f"(gen_length {schedule.gen_length}); give a smaller answer_start")

    def statistic(self, logits):
        top2 = jax.lax.top_k(logits, 2)[0]  # [B, G, 2]
        return top2[..., 0] - top2[..., 1]

    def fires(self, statistic, progress):
        position = jnp.arange(statistic.shape[-1])
        region = (position >= self.answer_start) & (position < self.answer_start + self.answer_length)  # [G]
        gap = jnp.where(region, statistic, 0).sum(-1) / region.sum()  # [B]; check_schedule: the region is not empty
        threshold = jnp.where(progress < self.mid_from, self.early_gap,
                              jnp.where(progress < self.late_from, self.mid_gap, self.late_gap))
        return gap >= threshold
