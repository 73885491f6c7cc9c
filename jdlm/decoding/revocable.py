"""Revocable rules (WINO, ASRD): each step drafts tokens and may send decoded ones back to the mask.

One step is one forward pass over the sequence and the block's shadow twins (`shadow.py`):
  the rule's input embeddings (ASRD) -> forward -> proposals and confidences of the block's masked positions,
  and each decoded position's probability under its twin -> the rule drafts positions to reveal and picks decoded
  ones to re-mask (`wino_select`) -> write both -> bookkeeping.
A position goes back to the mask at most `max_revocations` times; after that it is kept. So every position is
revealed at most `max_revocations + 1` times, and since each step of a row that still has masks reveals at least one,
a block ends within W * (max_revocations + 1) steps: the loop always terminates (the cap is also checked).
"""

from __future__ import annotations

from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from jdlm.decoding import loop
from jdlm.decoding.part import knob, part
from jdlm.decoding.proposals import gumbel_argmax, token_probability
from jdlm.decoding.rule import Rule, best_one, top_count
from jdlm.decoding.shadow import shadow_logits
from jdlm.decoding.state import DecodeInputs, DecodeState
from jdlm.errors import StrategyError

FIRST_LAST_ACCEPT = 30  # WINO's `last_accept` at the start of every block


@flax.struct.dataclass
class RevocableMemory:
    """What a revocable rule carries between steps. B batch, G generation length.

    last_accept: [B] int32     positions the row's previous step in the block drafted (30 at a block's start).
    revoked:     [B, G] int32  times each generated position went back to the mask.
    extra:       the rule's own memory (ASRD's anchors), or None.
    """

    last_accept: jax.Array
    revoked: jax.Array
    extra: object = None


@part
class Revocable(Rule):
    """Base of WINO and ASRD: draft wide, verify narrow, re-mask what fails (see `wino_select` for the sets).

    threshold: a masked position is drafted when its proposal's probability is > threshold (at least one a step,
      at most the cap). threshold_back: a decoded position of the block goes back to the mask when its twin gives
      its token a probability < threshold_back. max_revocations: times a position may go back (jdlm's termination
      guarantee; upstream WINO has none). draft_fraction, draft_min, draft_max: the draft's cap, clip(floor(
      draft_fraction * n), draft_min, draft_max) for n masked (upstream's fixed 0.7, 5, 20). All traced.
    """

    counted: ClassVar[bool] = False
    revocable: ClassVar[bool] = True
    threshold: float = knob(0.6)
    threshold_back: float = knob(0.9)
    max_revocations: int = knob(8)
    draft_fraction: float = knob(0.7)
    draft_min: int = knob(5)
    draft_max: int = knob(20)

    def __post_init__(self):
        for name in ("threshold", "threshold_back"):
            if not 0 <= getattr(self, name) <= 1:
                raise StrategyError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_revocations < 0 or self.max_revocations != int(self.max_revocations):
            raise StrategyError(f"max_revocations must be an integer >= 0, got {self.max_revocations}")
        if not 0 < self.draft_fraction <= 1:
            raise StrategyError(f"draft_fraction must be in (0, 1], got {self.draft_fraction}")
        if not 1 <= self.draft_min <= self.draft_max or int(self.draft_min) != self.draft_min or \
                int(self.draft_max) != self.draft_max:
            raise StrategyError(f"draft_min and draft_max must be integers with 1 <= draft_min <= draft_max, got "
                                f"{self.draft_min} and {self.draft_max}")

    def check_schedule(self, schedule):
        if schedule.keep_idle_steps or schedule.first_token_at_block_start:
            raise StrategyError("revocable rules (wino, asrd) decide their own steps: keep_idle_steps and "
                                "first_token_at_block_start must be off")

    def check_strategy(self, strategy):
        if (strategy.guidance is not None or strategy.commit is not None or strategy.proposer is not None
                or strategy.guide is not None):
            raise StrategyError("revocable rules (wino, asrd) run without cfg_scale, a commit part, a joint sampler "
                                "or an AR guide")
        if type(strategy.cache).__name__ != "NoCache":
            raise StrategyError("revocable rules (wino, asrd) need the full sequence every step: use cache none")

    def for_model(self, config):
        if config.logits_shift:
            raise StrategyError("wino and asrd verify with WINO's shadow block, defined for unshifted models "
                                "(LLaDA); this model predicts each position from the one before (Dream)")
        return self

    def init_memory(self, batch: int, length: int) -> RevocableMemory:
        return RevocableMemory(last_accept=jnp.full((batch,), FIRST_LAST_ACCEPT, jnp.int32),
                               revoked=jnp.zeros((batch, length), jnp.int32), extra=self.init_extra(batch, length))

    # ------------------------------------------------------------ what ASRD changes (WINO: nothing)

    def init_extra(self, batch: int, length: int):
        """The rule's own memory (`RevocableMemory.extra`), None for none."""

    def extra_embed(self, params, tokens, memory: RevocableMemory, block_start, offset, width: int, key):
        """[B, L + W, D] added to the forward's input embeddings (tokens [B, L], the block [offset, offset + W) of
        the generation, keys [B]), or None for nothing."""

    def protected(self, memory: RevocableMemory, offset, width: int) -> jax.Array:
        """[B, W] bool (or a [] bool for every position): decoded block positions that must not go back to the
        mask (ASRD's anchors)."""
        return jnp.bool_(False)

    def observe(self, memory: RevocableMemory, block, twins, masked, tokens, decoded, offset):
        """The rule's memory after a step: block / twins float32 [B, W, V] logits; masked [B, W] before the step's
        writes; tokens and decoded [B, W] after them."""
        return memory.extra

    def decode_step(self, inputs: DecodeInputs, state: DecodeState, strategy) -> DecodeState:
        return revocable_step(inputs, state, strategy)


def wino_select(confidence, verify, masked, revocable, last_accept, threshold, threshold_back, cap_rule=(0.7, 5, 20)):
    """WINO's draft and verification for one step (REFERENCE.md 3.2.1), per row. B batch, W block.

    Args:
      confidence: [B, W] the proposal's probability at each masked position.
      verify: [B, W] the twin's probability of each decoded position's token.
      masked: [B, W] bool, positions still masked; revocable: [B, W] bool, decoded positions that may go back.
      last_accept: [B] int32 positions the row's previous step drafted.
      cap_rule: (fraction, low, high) of the draft's cap; upstream's (0.7, 5, 20).

    Returns (reveal, remask), disjoint [B, W] bool:
      draft  A = {masked, confidence > threshold}; more than cap = min(max(floor(fraction n), low), high) (n
             masked) keeps the cap most confident; none takes the single most confident.
      verify only when |A| > 1: R = {revocable, verify < threshold_back}; |R| >= last_accept keeps the
             last_accept - 1 lowest (none when last_accept is 1).
    Ties go to the lowest position.
    """
    fraction, low, high = cap_rule
    n = masked.sum(-1)
    # float32 floor(0.7 n) equals upstream's float64 int(n * 0.7) for every n < 90 (the clip binds from n = 30)
    cap = jnp.clip(jnp.floor(jnp.asarray(fraction, jnp.float32) * n).astype(jnp.int32), low, high)
    conf = jnp.where(masked, confidence, -jnp.inf)
    accept = masked & (conf > threshold)
    accept = jnp.where((accept.sum(-1) > cap)[:, None], top_count(conf, masked, cap[:, None]), accept)
    accept = jnp.where(accept.any(-1)[:, None], accept, best_one(conf, masked))
    back = jnp.where(revocable, verify, jnp.inf)
    remask = revocable & (back < threshold_back)
    lowest = top_count(-back, remask, (last_accept - 1)[:, None])
    remask = jnp.where((remask.sum(-1) >= last_accept)[:, None], lowest, remask)
    return accept, remask & (accept.sum(-1) > 1)[:, None]


def revocable_step(inputs: DecodeInputs, state: DecodeState, strategy) -> DecodeState:
    """One forward pass of a revocable rule and the reveals and re-masks it decides (module docstring)."""
    sched, rule, seq = strategy.schedule, strategy.rule, inputs.seq
    mask_id = seq.params.config.mask_id
    P, W = seq.prompt_len, sched.block_length
    split = jax.vmap(lambda k: jax.random.split(k, 3))(state.key)  # [B, 3]
    key, k_propose, k_embed = split[:, 0], split[:, 1], split[:, 2]
    block_start = P + state.block_index * W
    offset = block_start - P
    memory = state.memory
    memory = memory.replace(last_accept=jnp.where(state.step_in_block == 0, FIRST_LAST_ACCEPT, memory.last_accept))
    block_tokens = jax.lax.dynamic_slice_in_dim(state.tokens, block_start, W, axis=1)  # [B, W]
    masked = block_tokens == mask_id
    active = ~state.done & masked.any(-1)  # [B]

    extra = rule.extra_embed(seq.params, state.tokens, memory, block_start, offset, W, k_embed)
    block, twins = shadow_logits(seq, state.tokens, block_start, mask_id, extra)  # [B, W, V] each
    temperature = sched.temperature if sched.sampled else None
    proposal = gumbel_argmax(block, temperature, k_propose)
    confidence = token_probability(block, proposal)
    verify = token_probability(twins, block_tokens)
    revoked = jax.lax.dynamic_slice_in_dim(memory.revoked, offset, W, axis=1)
    revocable = ~masked & (revoked < rule.max_revocations) & ~rule.protected(memory, offset, W)
    reveal, remask = wino_select(confidence, verify, masked, revocable, memory.last_accept, rule.threshold,
                                 rule.threshold_back, (rule.draft_fraction, rule.draft_min, rule.draft_max))
    reveal &= active[:, None]
    remask &= active[:, None]

    written = jnp.where(reveal, proposal, jnp.where(remask, mask_id, block_tokens))
    tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, written, block_start, axis=1)
    revealed_at = loop._update_window(state.revealed_at, reveal, state.forwards, offset)
    revealed_at = loop._update_window(revealed_at, remask, -1, offset)
    revealed_conf = loop._update_window(state.revealed_conf, reveal | remask, jnp.where(reveal, confidence, 0.0),
                                        offset)
    extra_memory = rule.observe(memory, block, twins, masked, written, written != mask_id, offset)
    memory = RevocableMemory(
        last_accept=jnp.where(active, reveal.sum(-1), memory.last_accept),
        revoked=loop._update_window(memory.revoked, remask, revoked + 1, offset),
        extra=jax.tree.map(lambda new, old: jnp.where(loop._rows(active, new), new, old), extra_memory, memory.extra))
    done = state.done
    if sched.stop_at_eos:
        tokens, done, revealed_at = loop._stop_at_end(tokens, done, revealed_at, state.forwards, P,
                                                      seq.params.config)

    left = jax.lax.dynamic_slice_in_dim(tokens, block_start, W, axis=1) == mask_id
    taken = state.step_in_block + 1
    block_over = ~(left.any(-1) & ~done).any() | (taken >= W * (rule.max_revocations + 1))
    return state.replace(
        tokens=tokens, block_index=state.block_index + block_over, step_in_block=jnp.where(block_over, 0, taken),
        forwards=state.forwards + 1, full_forwards=state.full_forwards + loop.is_full_forward(state, strategy),
        nfe=state.nfe + active, done=done, refresh=block_over, key=key,
        revealed_at=revealed_at, revealed_conf=revealed_conf, memory=memory)
