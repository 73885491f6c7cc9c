"""`decode`: the one driver. Every strategy runs through this single `lax.while_loop`.

Each iteration is one step of the current block:
  forward (through the strategy's cache) -> the rule's proposals and confidences for the block -> the rule picks
  positions to reveal (a mask, never a dynamic slice) -> write them -> bookkeeping (NFE, trace, EOS stop) ->
  advance to the next block when this one is finished.
Blocks are decoded in lockstep across the batch; a row with nothing left to do in the block sits out (its
tokens and NFE are frozen), so every row gets exactly the tokens and NFE it would get decoded alone.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp

from jdlm.cache import SequenceInputs
from jdlm.decoding.inputs import check_prompt
from jdlm.decoding.state import DecodeResult, DecodeState, Trace
from jdlm.decoding.strategy import Strategy
from jdlm.model import Params

_TRACES: collections.Counter = collections.Counter()


def trace_count(strategy: Strategy | None = None) -> int:
    """How many times the decode loop was traced (compiled), for one strategy or in all."""
    return _TRACES[strategy] if strategy is not None else sum(_TRACES.values())


def decode(params: Params, prompt, strategy: Strategy, *, key: jax.Array | None = None,
           prompt_mask=None) -> DecodeResult:
    """Generates `strategy.schedule.gen_length` tokens after each prompt.

    Compiled once per (params structure, batch, prompt length, strategy); later calls with the same shapes reuse
    the compiled loop, which runs on the device without returning to Python.

    Args:
      params: model weights (`jdlm.load` / `init_params`).
      prompt: [B, P] integer token ids, left-padded (see `pad_prompts`); a 1-D prompt is treated as B = 1.
      strategy: a `Strategy`.
      key: PRNG key for sampled proposals and random orders (default `jax.random.key(0)`): one key, from which
        row b takes `jax.random.fold_in(key, b)`, or one key per row ([B]). Row b of a batch decodes exactly as
        its prompt alone with that row's key.
      prompt_mask: [B, P] bool, True at real tokens, or None when nothing is padded.

    Returns:
      DecodeResult with tokens [B, G], nfe [B], steps [] and the unmasking trace.
    """
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a jdlm.Strategy, got {type(strategy).__name__}")
    if not jnp.issubdtype(params.dtype, jnp.floating):
        raise TypeError(f"params must hold floating-point weights, got {params.dtype}")
    prompt, prompt_mask = check_prompt(params.config, prompt, prompt_mask, strategy.schedule.gen_length)
    keys = row_keys(jax.random.key(0) if key is None else key, prompt.shape[0])
    return _decode(params, jnp.asarray(prompt, jnp.int32), None if prompt_mask is None else jnp.asarray(prompt_mask),
                   keys, strategy)


def row_keys(key: jax.Array, batch: int) -> jax.Array:
    """One typed PRNG key per row: [B]. Accepts typed or raw (uint32) keys, single or per row."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch))
    if key.shape != (batch,):
        raise ValueError(f"key must be one PRNG key or one per row ({batch}), got shape {key.shape}")
    return key


@functools.partial(jax.jit, static_argnames="strategy")
def _decode(params: Params, prompt: jax.Array, prompt_mask: jax.Array | None, key: jax.Array,
            strategy: Strategy) -> DecodeResult:
    _TRACES[strategy] += 1
    cfg = params.config
    sched, rule = strategy.schedule, strategy.rule
    B, P = prompt.shape
    G, W = sched.gen_length, sched.block
    L = P + G
    table = sched.block_counts()  # reveal count per step of a block, computed on the host
    counts = jnp.asarray(table) if rule.counted else None
    steps_in_block = len(table) if rule.counted else W  # a rule that picks its own count reveals >= 1 per step

    # Positions count from each row's first real token; padding is masked as keys.
    valid = jnp.ones((B, L), bool) if prompt_mask is None else \
        jnp.concatenate([prompt_mask, jnp.ones((B, G), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    key_mask = None if prompt_mask is None else valid
    rows = 2 * B if strategy.guidance else B
    if strategy.guidance:
        positions = jnp.concatenate([positions, positions])
        key_mask = None if key_mask is None else jnp.concatenate([key_mask, key_mask])
    seq = SequenceInputs(params=params, positions=positions, key_mask=key_mask, prompt_len=P, block=W)

    state = DecodeState(
        tokens=jnp.concatenate([prompt, jnp.full((B, G), cfg.mask_id, jnp.int32)], axis=1),
        block=jnp.int32(0), block_step=jnp.int32(0), forwards=jnp.int32(0), nfe=jnp.zeros((B,), jnp.int32),
        done=jnp.zeros((B,), bool), refresh=jnp.bool_(True), key=key,
        kv=strategy.cache.init(params, rows, L),
        revealed_at=jnp.full((B, G), -1, jnp.int32), revealed_conf=jnp.zeros((B, G), jnp.float32))

    def block_logits(state: DecodeState, block_start):
        tokens = state.tokens
        if strategy.guidance:
            tokens = strategy.guidance.double(tokens, P, cfg.mask_id)
        logits, kv = strategy.cache.block_logits(seq, tokens, state.kv, state.refresh, block_start)
        logits = logits.astype(jnp.float32)
        if strategy.guidance:
            logits = strategy.guidance.combine(logits)
        # Never propose the mask token itself (trained models never do; random ones can, and would stall).
        return logits.at[..., cfg.mask_id].set(-jnp.inf), kv

    def step(state: DecodeState) -> DecodeState:
        split = jax.vmap(lambda k: jax.random.split(k, 3))(state.key)  # [B, 3]
        key, k_propose, k_select = split[:, 0], split[:, 1], split[:, 2]
        block_start = P + state.block * W
        logits, kv = block_logits(state, block_start)  # [B, W, V]
        block = jax.lax.dynamic_slice_in_dim(state.tokens, block_start, W, axis=1)  # [B, W]
        masked = block == cfg.mask_id
        active = ~state.done & (masked.any(-1) | sched.keep_idle_steps)  # [B]

        proposal, confidence = rule.propose(logits, sched.temperature, k_propose)
        candidates = masked & active[:, None]
        confidence = jnp.where(candidates, confidence, -jnp.inf)
        count = counts[jnp.minimum(state.block_step, steps_in_block - 1)] if rule.counted else jnp.int32(0)
        reveal = rule.select(confidence, candidates, count, k_select) & candidates  # [B, W]
        if sched.first_token_at_block_start:
            first = candidates & (jnp.arange(W) == 0)
            reveal = jnp.where(state.block_step == 0, first, reveal)

        tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, jnp.where(reveal, proposal, block), block_start, 1)
        offset = block_start - P
        revealed_at = _update_window(state.revealed_at, reveal, state.forwards, offset)
        revealed_conf = _update_window(state.revealed_conf, reveal, confidence, offset)
        done = state.done
        if sched.stop_at_eos:
            tokens, done, revealed_at = _stop_at_end(tokens, done, revealed_at, state.forwards, P, cfg)

        left = jax.lax.dynamic_slice_in_dim(tokens, block_start, W, axis=1) == cfg.mask_id
        any_left = (left.any(-1) & ~done).any()
        taken = state.block_step + 1
        block_over = taken >= steps_in_block
        if not sched.keep_idle_steps:
            block_over |= ~any_left
        every = strategy.cache.refresh_every
        periodic = (taken % every == 0) if every else False
        return DecodeState(
            tokens=tokens, block=state.block + block_over, block_step=jnp.where(block_over, 0, taken),
            forwards=state.forwards + 1, nfe=state.nfe + active, done=done, refresh=block_over | periodic, key=key,
            kv=kv, revealed_at=revealed_at, revealed_conf=revealed_conf)

    def not_finished(state: DecodeState):
        return (state.block < sched.n_blocks) & ~state.done.all()  # blocks left, and a row still decoding

    final = jax.lax.while_loop(not_finished, step, state)
    return DecodeResult(tokens=final.tokens[:, P:], nfe=final.nfe, steps=final.forwards,
                        trace=Trace(step=final.revealed_at, confidence=final.revealed_conf))


def _update_window(buffer, reveal, value, offset):
    """buffer[:, offset:offset + W] = where(reveal, value, buffer[...]) for a [B, G] buffer."""
    W = reveal.shape[1]
    old = jax.lax.dynamic_slice_in_dim(buffer, offset, W, axis=1)
    new = jnp.where(reveal, jnp.broadcast_to(value, reveal.shape).astype(buffer.dtype), old)
    return jax.lax.dynamic_update_slice_in_dim(buffer, new, offset, axis=1)


def _stop_at_end(tokens, done, revealed_at, step, P, cfg):
    """Rows whose generation has an end token with everything before it revealed: fill the rest with EOS.

    gen  [a, b, EOS, M, c, M]   (M = mask)   ->   [a, b, EOS, EOS, EOS, EOS], row done
    """
    gen = tokens[:, P:]
    G = gen.shape[1]
    end = jnp.isin(gen, jnp.asarray(cfg.end_ids))
    first_end = jnp.where(end.any(-1), jnp.argmax(end, axis=-1), G)  # [B]
    idx = jnp.arange(G)
    masked_before = ((gen == cfg.mask_id) & (idx < first_end[:, None])).any(-1)
    finish = ~done & (first_end < G) & ~masked_before
    fill = finish[:, None] & (idx > first_end[:, None])
    newly = fill & (gen == cfg.mask_id)
    gen = jnp.where(fill, cfg.eos_id, gen)
    revealed_at = jnp.where(newly, step, revealed_at)
    return tokens.at[:, P:].set(gen), done | finish, revealed_at
