"""Axon: when the base rule's reveals look stuck, reveal the confident tokens the uncertain ones lean on."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jdlm.decoding.dawn import Dawn
from jdlm.decoding.part import child, knob, part
from jdlm.decoding.rule import Context, Rule, best_one, top_count
from jdlm.errors import StrategyError

GATES = ("coverage_gap", "progress_stall")
SELECTORS = ("fixed1", "cover")


# Behaviour follows Jerryaa98/AXON llada/generate.py (`generate` with unlock_technique="submodular-exit") and
# llada/gdllm_utils.py (`select_axon_adaptive_gate_anchors`) at commit 2ff1c7d, released settings from run_llada.sh.
@part
class Axon(Rule):
    """Runs the `base` rule; on a step where its gate fires, reveals anchors instead of the base's choice D.

    Signals over the block's masked positions M: c_i the proposal's probability, A the block's attention (heads and
    the last `attention_layers` layers averaged). Anchor weight of candidate j for position i:
    w_ij = A_ij (1 - c_i) c_j, with sink keys (column mean > `sink`) and A_ii zeroed; coverage of a set S:
    C(S) = sum_i max_{j in S} w_ij. Candidates: the `candidates` most confident of M. Selection is greedy by
    marginal coverage gain (+1e-6 c_j; ties to the lowest position): `selector` "fixed1" takes one anchor; "cover"
    adds anchors until C(S) >= C(D) (computed on the unfiltered attention), at most ceil(log2(|M| + 1)).

    Gates, with R = M \\ D and r = |D| / |M|:
      coverage_gap: g < max(r, 1 - mean_{i in R} c_i), where g is the mean over i in R of the share of i's
        attention to the block that lands on D (1 when R is empty, 0 when D is);
      progress_stall: r < ceil(|M| / max(1, pace_steps - s)) / |M| and r did not grow since the step before (s: the
        step in the block, s > 0).
    Anchor steps are allowed while s < `max_anchor_steps` (released: 1, the block's first step). Exit: from step
    `min_anchor_steps` on, the base decides when the mean c over M exceeds `exit_confidence` (0: off). Upstream
    computes this exit and then lets the gate overwrite it, so there it never acts; with the released step limits
    both agree. Axon always reveals at least one position a step, so a counted base cannot stall it.

    The base reads the same attention as Axon. Each row is decided alone (upstream averages the gate's signals
    over the batch; its runs are batch 1); confidences are float32 (upstream float64).
    """

    counted: ClassVar[bool] = False
    base: Rule = child(Dawn())
    gate: str = "coverage_gap"
    selector: str = "fixed1"
    candidates: int = 32
    min_select: int = 1
    max_anchor_steps: int = knob(1)
    min_anchor_steps: int = knob(1)
    exit_confidence: float = knob(0.85)
    pace_steps: int = knob(16)
    sink: float = knob(0.01)
    attention_layers: int = 4

    def __post_init__(self):
        if isinstance(self.base, str):  # the spec form: base=threshold:0.8, further fields after commas
            from jdlm.decoding.strategy import parse_rule
            object.__setattr__(self, "base", parse_rule(self.base.replace(",", " ")))
        if not isinstance(self.base, Rule) or isinstance(self.base, Axon):
            given = type(self.base).__name__.lower() if isinstance(self.base, Rule) else repr(self.base)
            raise StrategyError(f"axon base must be a rule other than axon (e.g. dawn, threshold:0.9), got {given}")
        if self.gate not in GATES:
            raise StrategyError(f"axon gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        if self.selector not in SELECTORS:
            raise StrategyError(f"axon selector must be one of {', '.join(SELECTORS)}, got {self.selector!r}")
        for name in ("candidates", "min_select", "max_anchor_steps", "min_anchor_steps", "pace_steps",
                     "attention_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name.endswith("anchor_steps") else 1):
                raise StrategyError(f"axon {name} must be a{' non-negative' if name.endswith('anchor_steps') else ''}"
                                    f" whole number, got {value!r}")
        if not 0 <= self.exit_confidence <= 1 or not 0 < self.sink <= 1:
            raise StrategyError(f"axon exit_confidence must be in [0, 1] and sink in (0, 1], got "
                                f"{self.exit_confidence} and {self.sink}")

    def for_model(self, config):
        base = self.base.for_model(config)
        return self if base is self.base else dataclasses.replace(self, base=base)

    def check_schedule(self, schedule):
        self.base.check_schedule(schedule)

    def propose(self, logits, temperature, key):
        return self.base.propose(logits, temperature, key)

    def init_memory(self, batch, length):
        return jnp.full((batch,), -1.0, jnp.float32), self.base.init_memory(batch, length)  # last step's r, the base's

    def select_attending(self, confidence, candidates, budget, key, context, memory):
        last_rate, base_memory = memory
        if self.base.attention_layers:
            base, base_memory = self.base.select_attending(confidence, candidates, budget, key, context,
                                                           base_memory)
        else:
            base = self.base.select(confidence, candidates, budget, key)
        base &= candidates
        step = context.step_in_block
        c = jnp.where(candidates, confidence, 0.0)  # [B, W]
        n = candidates.sum(-1)
        rate = base.sum(-1) / jnp.maximum(n, 1)
        attention = context.block_keys(context.attention)  # [B, W(query), W(key)], unfiltered
        if self.gate == "coverage_gap":
            fires = _coverage_gap(attention, c, candidates, base, rate)
        else:
            remaining = jnp.maximum(1, self.pace_steps - step)
            needed = jnp.ceil(n / remaining) / jnp.maximum(n, 1)
            fires = (step > 0) & (rate <= last_rate) & (rate < needed)
        settled = (step >= self.min_anchor_steps) & (self.exit_confidence > 0) & \
            (c.sum(-1) / jnp.maximum(n, 1) > self.exit_confidence)
        anchor_step = fires & (step < self.max_anchor_steps) & ~settled & (n > 0)
        target = _coverage(_weights(attention, c), base, candidates & ~base)  # C(D)
        reveal = jnp.where(anchor_step[:, None], self.anchors(c, candidates, context, target), base)
        reveal |= ~reveal.any(-1, keepdims=True) & best_one(confidence, candidates)
        return reveal, (jnp.where(step < self.max_anchor_steps, rate, last_rate), base_memory)

    def anchors(self, c, masked, context: Context, target) -> jax.Array:
        """Greedy facility-location anchors [B, W] bool. c [B, W] confidence (0 outside `masked`), target [B]."""
        W = c.shape[-1]
        n = masked.sum(-1)
        pool = top_count(jnp.where(masked, c, -jnp.inf), masked, jnp.minimum(self.candidates, n)[:, None])
        sinks = context.block_keys(context.column_mean) > self.sink  # [B, W] block keys that are sinks
        attention = jnp.where(sinks[:, None, :] | jnp.eye(W, dtype=bool), 0.0, context.block_keys(context.attention))
        weights = jnp.where(masked[:, :, None] & pool[:, None, :], _weights(attention, c), 0.0)  # [B, i, j]
        most = max(self.min_select, 1 if self.selector == "fixed1" else W.bit_length())  # static trip count
        limit = 1 if self.selector == "fixed1" else 32 - jax.lax.clz(n.astype(jnp.int32))  # ceil(log2(n + 1))
        limit = jnp.minimum(jnp.minimum(n, pool.sum(-1)), jnp.maximum(self.min_select, limit))

        def pick(_, carry):
            chosen, cover, stopped = carry  # [B, W] bool, [B, W(i)] float32, [B] bool
            count = chosen.sum(-1)
            covered = (self.selector == "cover") & (count >= self.min_select) & (cover.sum(-1) >= target)
            left = pool & ~chosen
            gain = (jnp.maximum(cover[:, :, None], weights) - cover[:, :, None]).sum(1)  # [B, W(j)]
            best = jnp.argmax(jnp.where(left, gain + 1e-6 * c, -jnp.inf), axis=-1)  # [B]
            best_gain = jnp.take_along_axis(gain, best[:, None], axis=-1)[:, 0]
            go = ~stopped & (count < limit) & ~covered & left.any(-1) & \
                ~((best_gain <= 0) & (count >= self.min_select))
            one = go[:, None] & (jnp.arange(W) == best[:, None])
            column = jnp.take_along_axis(weights, best[:, None, None], axis=2)[..., 0]  # [B, W(i)]
            return chosen | one, jnp.where(go[:, None], jnp.maximum(cover, column), cover), stopped | ~go

        start = (jnp.zeros_like(masked), jnp.zeros(c.shape, c.dtype), jnp.zeros(n.shape, bool))
        chosen, _, _ = jax.lax.fori_loop(0, most, pick, start)
        return chosen | (~chosen.any(-1, keepdims=True) & best_one(jnp.where(pool, c, -jnp.inf), pool))


def _weights(attention, c):
    """w_ij = A_ij (1 - c_i)+ c_j: [B, W, W]."""
    return attention * jnp.maximum(1 - c, 0)[:, :, None] * c[:, None, :]


def _coverage(weights, chosen, rows) -> jax.Array:
    """C(S) = sum over `rows` i of max_{j in chosen} w_ij (0 when nothing is chosen): [B]."""
    best = jnp.where(chosen[:, None, :], weights, 0.0).max(-1)  # [B, W]; weights are >= 0
    return jnp.where(rows, best, 0.0).sum(-1)


def _coverage_gap(attention, c, masked, base, rate) -> jax.Array:
    """The coverage_gap gate [B] bool (see Axon)."""
    rest = masked & ~base
    n_rest = rest.sum(-1)
    rest_confidence = jnp.where(n_rest > 0, jnp.where(rest, c, 0).sum(-1) / jnp.maximum(n_rest, 1), 1.0)
    share = jnp.clip((attention * base[:, None, :]).sum(-1) / (attention.sum(-1) + 1e-8), 0, 1)  # [B, W]
    support = jnp.where(rest, share, 0).sum(-1) / jnp.maximum(n_rest, 1)
    support = jnp.where(n_rest == 0, 1.0, jnp.where(base.any(-1), support, 0.0))
    return (support < rate) | ((n_rest > 0) & (support < 1 - rest_confidence))
