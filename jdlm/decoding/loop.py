"""`decode` and `decode_steps`: every strategy runs through one step function, `step`.

Each step is one forward pass for the current block:
  forward (through the strategy's cache) -> the rule's proposals and confidences for the block -> the commit part,
  if any, may finish a row at once (every masked position gets its proposal) -> the rule picks positions to reveal
  (a mask, never a dynamic slice) -> write them -> bookkeeping (NFE, trace, EOS stop) -> advance to the next block
  when this one is finished.
`decode` runs `step` in one compiled `lax.while_loop`, with no return to Python; `decode_steps` drives the same
`step` from Python and yields after each forward pass (for live views and prompt interruption).

Blocks are decoded in lockstep across the batch; a row with nothing left to do in the block sits out (its
tokens and NFE are frozen), so every row gets exactly the tokens and NFE it would get decoded alone.

The strategy is an ordinary (traced) argument of the compiled functions: its structure is part of the compile key,
its numeric knobs are not (see `part`), so sweeping a threshold compiles once. With JAX's persistent compilation
cache on, the compiled functions are also stored beside it, and a later process runs them without tracing
(`executables`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jdlm import sharding
from jdlm.decoding import executables
from jdlm.decoding.cache import ForwardView, SequenceInputs
from jdlm.decoding.commit import Latest
from jdlm.decoding.inputs import check_prompt
from jdlm.decoding.rule import Budget, Context
from jdlm.decoding.schedule import StepTables
from jdlm.decoding.state import DecodeInputs, DecodeResult, DecodeState, Trace
from jdlm.decoding.strategy import Strategy
from jdlm.errors import StrategyError
from jdlm.model import Params


def decode(params: Params, prompt, strategy: Strategy, *, key: jax.Array | None = None,
           prompt_mask=None, guide: Params | None = None) -> DecodeResult:
    """Generates `strategy.schedule.gen_length` tokens after each prompt.

    Compiled once per (params structure, batch, prompt length, strategy structure); later calls with the same
    shapes reuse the compiled loop, also with other knob values (threshold, temperature, ...) and with or without
    `prompt_mask`. The loop runs on the device without returning to Python.

    Args:
      params: model weights (`jdlm.load` / `init_params`).
      prompt: [B, P] integer token ids, left-padded (see `pad_prompts`); a 1-D prompt is treated as B = 1.
      strategy: a `Strategy`.
      key: PRNG key for sampled proposals and random orders (default `jax.random.key(0)`): one key, from which
        row b takes `jax.random.fold_in(key, b)`, or one key per row ([B]). Row b of a batch decodes exactly as
        its prompt alone with that row's key.
      prompt_mask: [B, P], True (or 1) at real tokens and False (or 0) at left padding; None when nothing is padded.
      guide: the weights of the causal model that verifies the drafts, when the strategy has an ARGuide
        (`strategy.guide`); a traced argument like `params`, so another guide of the same shapes reuses the compile.

    Returns:
      DecodeResult with tokens [B, G], nfe [B], forwards [], the unmasking trace, and guide_nfe [B] with a guide.

    Params placed on a mesh (`jdlm.sharding`) decode there: the batch split over its data axis, the weights as
    placed; the same tokens and NFE as on one device.
    """
    params, prompt, prompt_mask, keys, strategy, tables = _arguments(params, prompt, strategy, key, prompt_mask,
                                                                     guide)
    mesh, rows = sharding.mesh_of(params), prompt.shape[0]
    prompt, prompt_mask, keys = sharding.shard_rows(mesh, prompt, prompt_mask, keys)
    with sharding.active(mesh):
        return sharding.take_rows(executables.call("decode_loop", _decode_loop, params, prompt, prompt_mask, keys,
                                                   strategy, tables, guide), rows)


def decode_steps(params: Params, prompt, strategy: Strategy, *, key: jax.Array | None = None,
                 prompt_mask=None, guide: Params | None = None) -> Iterator[DecodeResult]:
    """Decodes as `decode` does, one forward pass per compiled call, yielding the result so far after each.

    The last result yielded equals `decode(...)`'s. Slower than `decode` (one host round-trip per step); meant for
    live views (`jdlm generate --show`), streaming, and stopping promptly on Ctrl-C. Arguments as for `decode`;
    positions not revealed yet hold the mask id.
    """
    params, prompt, prompt_mask, keys, strategy, tables = _arguments(params, prompt, strategy, key, prompt_mask,
                                                                     guide)
    mesh, rows = sharding.mesh_of(params), prompt.shape[0]
    prompt, prompt_mask, keys = sharding.shard_rows(mesh, prompt, prompt_mask, keys)
    with sharding.active(mesh):
        inputs, state = executables.call("init", _init, params, prompt, prompt_mask, keys, strategy, tables, guide)
    going = True
    while going:
        with sharding.active(mesh):
            state, partial, going = executables.call("advance", _advance, inputs, state, strategy)
        yield sharding.take_rows(partial, rows)
        going = bool(going)


def prefetch(params: Params, prompt, strategy: Strategy, *, key: jax.Array | None = None, prompt_mask=None,
             guide: Params | None = None, steps: bool = False) -> int:
    """Starts loading, in background threads, the stored programs that `decode` (`steps=True`: `decode_steps`) will
    run with these arguments, so that a new process loads them while it makes or reads its weights. `params` (and
    `guide`) may be abstract: `jax.ShapeDtypeStruct`s of the weights' shapes (`jdlm.model.param_shapes`), taken as
    on the first device unless placed on another (`abstract_params`); prompt, key and mask as the decode will get
    them. Needs the store of compiled decodes (`jdlm.decoding.executables`: on with JAX's persistent cache, which
    the CLI turns on) to hold the programs, i.e. an earlier process ran the same decode. Returns how many programs
    started loading (0 when there is nothing to load)."""
    params, guide = _placed(params), None if guide is None else _placed(guide)
    args = _arguments(params, prompt, strategy, key, prompt_mask, guide) + (guide,)
    if not steps:
        return int(executables.prefetch("decode_loop", args))
    started = int(executables.prefetch("init", args))
    device = next(iter(jax.tree.leaves(params)[0].sharding.device_set))
    inputs, state = jax.tree.map(lambda a: _on(a, device), jax.eval_shape(_init, *args))
    return started + int(executables.prefetch("advance", (inputs, state, args[4])))


def abstract_params(params: Params, device: jax.Device | None = None) -> Params:
    """`params` (arrays or shapes, e.g. `jdlm.model.param_shapes(config)`) as `jax.ShapeDtypeStruct`s placed on
    `device` (default: the first device): what `prefetch` takes before the weights exist."""
    device = device or jax.devices()[0]
    return jax.tree.map(lambda a: _on(a, device), params)


def _placed(params: Params) -> Params:
    """Shapes placed nowhere (`param_shapes`) as on the first device, where a decode's weights are by default;
    arrays and placed shapes as they are."""
    return abstract_params(params) if getattr(jax.tree.leaves(params)[0], "sharding", None) is None else params


def _on(aval, device) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=getattr(aval, "weak_type", False),
                                sharding=jax.sharding.SingleDeviceSharding(device))


def _arguments(params: Params, prompt, strategy: Strategy, key, prompt_mask, guide=None):
    """Checks everything on the host and builds the arguments of the compiled functions."""
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a jdlm.Strategy, got {type(strategy).__name__}")
    check_guide(params, strategy, guide)
    if not jnp.issubdtype(params.dtype, jnp.floating):
        raise TypeError(f"params must hold floating-point weights, got {params.dtype}")
    prompt, prompt_mask = check_prompt(params.config, prompt, prompt_mask, strategy.schedule.gen_length)
    B = prompt.shape[0]
    # A mask without padding is no mask: one program for both, and attention keeps its unmasked fast path.
    no_padding = prompt_mask is None or (not isinstance(prompt_mask, jax.core.Tracer) and np.asarray(prompt_mask).all())
    mask = None if no_padding else _as_array(prompt_mask, bool)
    keys = default_row_keys(B, jax.config.jax_default_prng_impl) if key is None else row_keys(key, B)
    strategy = strategy.for_model(params.config)
    tables = strategy.schedule.tables()  # NumPy: the compiled call takes them as they are, with no program of its own
    return params, _as_array(prompt, np.int32), mask, keys, strategy, tables


def _as_array(x, dtype):
    """x as an array of `dtype`; NumPy stays NumPy, since the compiled call moves it to the device faster than a
    `jnp.asarray` here (about 0.3 ms of a decode's fixed cost at batch 1)."""
    return x.astype(dtype, copy=False) if isinstance(x, np.ndarray) else jnp.asarray(x, dtype)


def check_guide(params: Params, strategy: Strategy, guide: Params | None) -> None:
    """An ARGuide in the strategy needs the guide's weights, and weights need the part (StrategyError)."""
    if strategy.guide is not None and guide is None:
        raise StrategyError("the strategy has an AR guide: pass the causal model's weights, decode(..., guide=params) "
                            "(CLI: --guide PATH_OR_NAME)")
    if guide is not None and strategy.guide is None:
        raise StrategyError("guide weights were given but the strategy has no ARGuide: add it, "
                            "strategy.replace(guide=ARGuide()) (spec word: guide)")
    if guide is not None:
        strategy.guide.check_pair(params, guide)
        if jax.default_backend() == "gpu" and command_buffers_capture_loops(os.environ.get("XLA_FLAGS", "")):
            raise StrategyError("XLA_FLAGS turns on command buffers for WHILE or CONDITIONAL, under which an "
                                "AR-guided decode (a while loop inside the decode's loop) returned wrong tokens on "
                                "an H100 with jax 0.11.2 (docs/eval/flashdlm.md); remove WHILE and CONDITIONAL from "
                                "--xla_gpu_enable_command_buffer")


def command_buffers_capture_loops(xla_flags: str) -> bool:
    """Whether an XLA_FLAGS string makes XLA capture while loops or conditionals in GPU command buffers. Each
    --xla_gpu_enable_command_buffer sets the captured kinds ("FUSION,WHILE"; empty: none) or edits the set so far
    ("+WHILE,-CUBLAS"), starting from XLA's default set, which captures neither."""
    enabled: set[str] = set()
    for value in re.findall(r"--xla_gpu_enable_command_buffer=(\S*)", xla_flags):
        kinds = [kind for kind in value.upper().split(",") if kind]
        if any(kind[0] in "+-" for kind in kinds):
            enabled = (enabled | {k[1:] for k in kinds if k[0] == "+"}) - {k[1:] for k in kinds if k[0] == "-"}
        else:
            enabled = set(kinds)
    return bool({"WHILE", "CONDITIONAL"} & enabled)


@functools.lru_cache(maxsize=16)
def default_row_keys(batch: int, impl: str) -> jax.Array:
    """`row_keys(jax.random.key(0, impl=impl), batch)`, made once per batch size and PRNG implementation (the
    `jax_default_prng_impl` of the call): a decode without a key skips building it.

    Made eagerly even inside a caller's jit (a `decode` there), so that the cache holds an array, never a tracer.
    """
    with jax.ensure_compile_time_eval():
        return row_keys(jax.random.key(0, impl=impl), batch)


def row_keys(key: jax.Array, batch: int) -> jax.Array:
    """One typed PRNG key per row: [B]. Accepts typed or raw (uint32) keys, single or per row."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return executables.call(f"row_keys_{batch}", _fold_rows(batch), key)
    if key.shape != (batch,):
        raise ValueError(f"key must be one PRNG key or one per row ({batch}), got shape {key.shape}")
    return key


# ---------------------------------------------------------------- the step, as pure functions


def init_state(params: Params, prompt: jax.Array, prompt_mask: jax.Array | None, keys: jax.Array,
               strategy: Strategy, tables: StepTables, guide: Params | None = None) -> tuple[DecodeInputs, DecodeState]:
    """The fixed inputs and the first state of a decode: prompt [B, P] int32, prompt_mask [B, P] bool (True at real
    tokens) or None (no padding), keys [B] PRNG keys, tables from `strategy.schedule.tables()`, the guide's weights
    (with an ARGuide; its prompt prefill runs here)."""
    cfg = params.config
    sched = strategy.schedule
    B, P = prompt.shape
    G = sched.gen_length
    L = P + G
    # Positions count from each row's first real token; padding is masked as keys.
    valid = None if prompt_mask is None else jnp.concatenate([prompt_mask, jnp.ones((B, G), bool)], axis=1)
    positions = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L)) if valid is None else \
        jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)  # [B, L]
    rows = 2 * B if strategy.guidance else B
    if strategy.guidance:
        positions = jnp.concatenate([positions, positions])
        valid = None if valid is None else jnp.concatenate([valid, valid])
    # What the forwards return beyond the block's logits: see SequenceInputs.span and probs_layers.
    reads = min(strategy.rule.attention_layers, cfg.n_layers)
    span = "sequence" if reads else "generation" if strategy.commit else "block"
    seq = SequenceInputs(params=params, positions=positions, key_mask=valid, prompt_len=P,
                         block_length=sched.block_length, span=span,
                         probs_layers=tuple(range(cfg.n_layers - reads, cfg.n_layers)),
                         hidden=strategy.proposer is not None)
    state = sharding.constrain_state(DecodeState(
        tokens=jnp.concatenate([prompt, jnp.full((B, G), cfg.mask_id, jnp.int32)], axis=1),
        block_index=jnp.int32(0), step_in_block=jnp.int32(0), forwards=jnp.int32(0), full_forwards=jnp.int32(0),
        nfe=jnp.zeros((B,), jnp.int32), done=jnp.zeros((B,), bool), refresh=jnp.bool_(True), key=keys,
        kv=strategy.cache.init(params, rows, L),
        revealed_at=jnp.full((B, G), -1, jnp.int32), revealed_conf=jnp.zeros((B, G), jnp.float32),
        latest=Latest.empty(B, G) if strategy.commit else None,
        memory=strategy.rule.init_memory(B, G),
        guide=strategy.guide.init(guide, prompt, positions[:B], None if valid is None else valid[:B], L)
        if strategy.guide else None))
    return DecodeInputs(seq=seq, tables=tables, guide=guide), state


def block_logits(inputs: DecodeInputs, state: DecodeState, strategy: Strategy, block_start):
    """Logits of the current block's positions, float32 [B, W, V]; the forward's ForwardView with float32 logits
    of its span (the same, for strategies that need only the block); and the updated KV cache."""
    seq = inputs.seq
    cfg = seq.params.config
    tokens = state.tokens
    if strategy.guidance:
        tokens = strategy.guidance.double(tokens, seq.prompt_len, cfg.mask_id)
    view, kv = strategy.cache.block_logits(seq, tokens, state.kv, state.refresh, block_start)
    logits = view.logits.astype(jnp.float32)
    attention, column_mean = view.attention, view.column_mean
    if strategy.guidance:
        logits = strategy.guidance.combine(logits)
        if attention is not None:  # the rule reads where the conditional rows look
            B = logits.shape[0]
            attention, column_mean = attention[:B], column_mean[:B]
    # Never propose the mask token itself (trained models never do; random ones can, and would stall).
    logits = logits.at[..., cfg.mask_id].set(-jnp.inf)
    view = ForwardView(logits=logits, fresh=view.fresh, attention=attention, column_mean=column_mean,
                       hidden=view.hidden)
    return view.block(block_start - seq.span_start(block_start), seq.block_length), view, kv


def step(inputs: DecodeInputs, state: DecodeState, strategy: Strategy) -> DecodeState:
    """One forward pass and the reveals it decides: the body of the decode loop."""
    if strategy.rule.revocable:  # WINO, ASRD: their own step (jdlm/decoding/revocable.py)
        return strategy.rule.decode_step(inputs, state, strategy)
    sched, rule, tables = strategy.schedule, strategy.rule, inputs.tables
    cfg = inputs.seq.params.config
    P, W = inputs.seq.prompt_len, sched.block_length
    split = jax.vmap(lambda k: jax.random.split(k, 3))(state.key)  # [B, 3]
    key, k_propose, k_select = split[:, 0], split[:, 1], split[:, 2]
    block_start = P + state.block_index * W
    offset = block_start - P
    logits, view, kv = block_logits(inputs, state, strategy, block_start)  # [B, W, V]
    block_tokens = jax.lax.dynamic_slice_in_dim(state.tokens, block_start, W, axis=1)  # [B, W]
    masked = block_tokens == cfg.mask_id
    active = ~state.done & (masked.any(-1) | sched.keep_idle_steps)  # [B]

    temperature = sched.temperature if sched.sampled else None
    proposal, confidence = rule.propose(logits, temperature, k_propose)
    candidates = masked & active[:, None]
    confidence = jnp.where(candidates, confidence, -jnp.inf)
    # With a guide a counted block may need more steps than its counts: the last count is reused.
    at = jnp.minimum(state.step_in_block, (tables.steps_in_block if strategy.guide else sched.table_length) - 1)
    budget = Budget(count=tables.counts[at], fraction=tables.fraction[at])
    # A joint sampler reveals the step's budget in rounds: the rule's reveal below is its first round.
    first_round = strategy.proposer.round_budget(rule, budget, 0) if strategy.proposer is not None else budget
    memory = state.memory
    if rule.attention_layers:
        context = Context(attention=view.attention, column_mean=view.column_mean,
                          key_confidence=jnp.where(view.fresh, _top_probability(view.logits), 0.0),
                          masked=state.tokens == cfg.mask_id, block_start=block_start,
                          step_in_block=state.step_in_block)
        reveal, memory = rule.select_attending(confidence, candidates, first_round, k_select, context, memory)
        reveal &= candidates
    else:
        reveal = rule.select(confidence, candidates, first_round, k_select) & candidates  # [B, W]
    guide = state.guide
    if strategy.guide:  # the guide cuts the rule's reveals at its first rejected draft
        B, seq = state.tokens.shape[0], inputs.seq  # seq's rows are doubled with guidance: the first B are ours
        reveal, proposal, guide = strategy.guide.verify(inputs.guide, guide, state.tokens, seq.positions[:B],
                                                        None if seq.key_mask is None else seq.key_mask[:B],
                                                        proposal, reveal, block_start, cfg.mask_id, P)
    if sched.first_token_at_block_start:
        first = candidates & (jnp.arange(W) == 0)
        reveal = jnp.where(state.step_in_block == 0, first, reveal)
    if strategy.proposer is not None:
        positions = jax.lax.dynamic_slice_in_dim(inputs.seq.positions, block_start, W, axis=1)
        proposal, confidence, reveal = strategy.proposer.later_rounds(
            inputs.seq.params, rule, view.hidden, block_tokens, positions, proposal, confidence, reveal, candidates,
            budget, temperature, k_propose, k_select)
    latest, commits = state.latest, None
    if strategy.commit:
        generation = view if inputs.seq.span == "generation" else view.tail(P)
        latest, commits = _consult_commit(strategy, state, generation, proposal, confidence, k_propose, offset,
                                          temperature)
        commits &= active
        reveal &= ~commits[:, None]  # the all-in fill below writes the block too, with the same proposals

    written = jnp.where(reveal, proposal, block_tokens)
    tokens = jax.lax.dynamic_update_slice_in_dim(state.tokens, written, block_start, axis=1)
    revealed_at = _update_window(state.revealed_at, reveal, state.forwards, offset)
    revealed_conf = _update_window(state.revealed_conf, reveal, confidence, offset)
    if commits is not None:
        tokens, revealed_at, revealed_conf = _fill_all(tokens, revealed_at, revealed_conf, commits, latest,
                                                       state.forwards, P, cfg.mask_id)
    done = state.done
    if sched.stop_at_eos:
        tokens, done, revealed_at = _stop_at_end(tokens, done, revealed_at, state.forwards, P, cfg)
    if commits is not None:
        done |= commits
    if strategy.guide:
        guide = strategy.guide.settle(guide, tokens, cfg.mask_id)

    left = jax.lax.dynamic_slice_in_dim(tokens, block_start, W, axis=1) == cfg.mask_id
    any_left = (left.any(-1) & ~done).any()
    taken = state.step_in_block + 1
    # An uncounted rule reveals >= 1 a step; so does a guided one, whose counts the guide may cut.
    steps_in_block = tables.steps_in_block if rule.counted and not strategy.guide else W
    block_over = taken >= steps_in_block
    if not sched.keep_idle_steps:
        block_over |= ~any_left
    every = strategy.cache.refresh_every
    periodic = (taken % every == 0) if every else False
    return DecodeState(
        tokens=tokens, block_index=state.block_index + block_over, step_in_block=jnp.where(block_over, 0, taken),
        forwards=state.forwards + 1, full_forwards=state.full_forwards + is_full_forward(state, strategy),
        nfe=state.nfe + active, done=done, key=key,
        refresh=(block_over & strategy.cache.refresh_at_block_start) | periodic,
        kv=kv, revealed_at=revealed_at, revealed_conf=revealed_conf, latest=latest,
        memory=jax.tree.map(lambda new, old: jnp.where(_rows(active, new), new, old), memory, state.memory),
        guide=guide)


def is_full_forward(state: DecodeState, strategy: Strategy) -> jax.Array:
    """[] bool: this step's forward runs over the whole sequence (every step without a cache; a cache's refresh)."""
    return state.refresh if strategy.cache.reuses_keys else jnp.bool_(True)


def running(state: DecodeState, strategy: Strategy) -> jax.Array:
    """[] bool: blocks are left, and a row is still decoding."""
    return (state.block_index < strategy.schedule.n_blocks) & ~state.done.all()


def result(state: DecodeState, prompt_len: int) -> DecodeResult:
    """The generation part of a state (whole on every device of a mesh: small, and every host reads it)."""
    return sharding.replicate(DecodeResult(tokens=state.tokens[:, prompt_len:], nfe=state.nfe,
                                           forwards=state.forwards, full_forwards=state.full_forwards,
                                           trace=Trace(step=state.revealed_at, confidence=state.revealed_conf),
                                           guide_nfe=None if state.guide is None else state.guide.nfe))


# ---------------------------------------------------------------- compiled entry points


@jax.jit
def _decode_loop(params, prompt, prompt_mask, keys, strategy, tables, guide=None) -> DecodeResult:
    inputs, state = init_state(params, prompt, prompt_mask, keys, strategy, tables, guide)
    final = jax.lax.while_loop(lambda s: running(s, strategy), lambda s: step(inputs, s, strategy), state)
    return result(final, prompt.shape[1])


_init = jax.jit(init_state)


@functools.cache
def _fold_rows(batch: int):
    """key -> [batch] keys, fold_in(key, b) for every row b, as one compiled program (eagerly, three)."""
    return jax.jit(lambda key: jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch)))


@jax.jit
def _advance(inputs, state, strategy):
    state = step(inputs, state, strategy)
    return state, result(state, inputs.seq.prompt_len), running(state, strategy)


def _update_window(buffer, reveal, value, offset):
    """buffer[:, offset:offset + W] = where(reveal, value, buffer[...]) for a [B, G] buffer."""
    W = reveal.shape[1]
    old = jax.lax.dynamic_slice_in_dim(buffer, offset, W, axis=1)
    new = jnp.where(reveal, jnp.broadcast_to(value, reveal.shape).astype(buffer.dtype), old)
    return jax.lax.dynamic_update_slice_in_dim(buffer, new, offset, axis=1)


def _top_probability(logits):
    """The largest softmax probability per position: [B, S, V] -> [B, S]."""
    return jnp.exp(logits.max(-1) - jax.nn.logsumexp(logits, axis=-1))


def _rows(active, value):
    """active [B] shaped to broadcast against value [B, ...]."""
    return active.reshape(active.shape + (1,) * (value.ndim - 1))


def _consult_commit(strategy: Strategy, state: DecodeState, generation: ForwardView, proposal, confidence,
                    key, offset, temperature):
    """The latest view of the generation with this forward's news, and the commit part's verdict [B] bool.

    Proposals outside the block are drawn with a key of their own (folded from the block's), so that the block's
    proposals, and a decode in which the commit part never fires, are those of the same strategy without it.
    """
    fill_key = jax.vmap(lambda k: jax.random.fold_in(k, 1))(key)
    tokens, conf = strategy.rule.propose(generation.logits, temperature, fill_key)  # [B, G]
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, proposal, offset, axis=1)
    conf = jax.lax.dynamic_update_slice_in_dim(conf, confidence, offset, axis=1)
    latest = state.latest.update(generation.fresh, tokens, conf, strategy.commit.statistic(generation.logits))
    progress = (state.nfe + 1) / strategy.schedule.steps  # [B]: this forward pass is the row's (nfe + 1)-th
    return latest, strategy.commit.fires(latest.statistic, progress)


def _fill_all(tokens, revealed_at, revealed_conf, commits, latest: Latest, step_index, P, mask_id):
    """Rows that commit: every masked generated position gets its latest proposal."""
    gen = tokens[:, P:]
    fill = commits[:, None] & (gen == mask_id)  # [B, G]
    tokens = tokens.at[:, P:].set(jnp.where(fill, latest.token, gen))
    return (tokens, jnp.where(fill, step_index, revealed_at),
            jnp.where(fill, latest.confidence, revealed_conf))


def _stop_at_end(tokens, done, revealed_at, step_index, P, cfg):
    """Rows whose generation has an end token with everything before it revealed: fill the rest with EOS.

    gen  [a, b, EOS, M, c, M]   (M = mask)   ->   [a, b, EOS, EOS, EOS, EOS], row done
    """
    gen = tokens[:, P:]
    G = gen.shape[1]
    end = jnp.isin(gen, np.asarray(cfg.end_ids))
    first_end = jnp.where(end.any(-1), jnp.argmax(end, axis=-1), G)  # [B]
    idx = jnp.arange(G)
    masked_before = ((gen == cfg.mask_id) & (idx < first_end[:, None])).any(-1)
    finish = ~done & (first_end < G) & ~masked_before
    fill = finish[:, None] & (idx > first_end[:, None])
    newly = fill & (gen == cfg.mask_id)
    gen = jnp.where(fill, cfg.eos_id, gen)
    revealed_at = jnp.where(newly, step_index, revealed_at)
    return tokens.at[:, P:].set(gen), done | finish, revealed_at
