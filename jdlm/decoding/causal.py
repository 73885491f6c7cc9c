"""`decode_causal`: greedy left-to-right decoding of a causal model (e.g. `tiny-ar`) with a KV cache.

The prompt is one forward (the prefill) that fills the cache and predicts the first token; every later token is
one forward of a single position against the cache. Everything runs in one compiled `lax.while_loop`, which
stops when every row has produced an end token or `gen_length` tokens are out. NFE counts forward passes, i.e.
generated tokens (the end token included).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from jdlm.decoding.inputs import check_prompt
from jdlm.decoding.state import DecodeResult, Trace
from jdlm.errors import ConfigError
from jdlm.model import KVCache, Params, forward


@flax.struct.dataclass
class CausalState:
    """Carried through the loop. B batch, L = P + G sequence length, G generation length.

    tokens:        [B, L] int32    prompt, then the tokens generated so far (pad id after them).
    n:             [] int32        tokens generated so far = forward passes run for the batch.
    done:          [B] bool        the row has produced an end token (EOS or end of turn).
    kv:            KVCache [B, L, K, H] per layer, filled for positions < P + n - 1 (the last token is fed next).
    revealed_at:   [B, G] int32    forward pass (0-based) that produced each position; -1: not yet.
    revealed_conf: [B, G] float32  probability of the chosen token.
    """

    tokens: jax.Array
    n: jax.Array
    done: jax.Array
    kv: KVCache
    revealed_at: jax.Array
    revealed_conf: jax.Array


def decode_causal(params: Params, prompt, gen_length: int, *, prompt_mask=None) -> DecodeResult:
    """Greedy autoregressive decoding (argmax at every position; the mask token is never chosen).

    Args:
      params: weights of a causal model (`params.config.causal`).
      prompt: [B, P] integer token ids, left-padded (see `pad_prompts`); a 1-D prompt is treated as B = 1.
      gen_length: most tokens to generate (G); static, so each value compiles once.
      prompt_mask: [B, P] bool, True at real tokens, or None when nothing is padded.

    Returns:
      DecodeResult: tokens [B, G] (EOS after a row's end token), nfe [B] tokens each row generated (its end
      token included), forwards [] forward passes run for the batch, trace: the forward pass that produced each
      position (position g by pass g; EOS fill by the pass of the row's end token).
    """
    if not params.config.causal:
        raise ConfigError("decode_causal needs a causal model (config.causal is False); decode a masked-diffusion "
                          "model with jdlm.decode")
    prompt, prompt_mask = check_prompt(params.config, prompt, prompt_mask, gen_length)
    return _decode_causal(params, jnp.asarray(prompt, jnp.int32),
                          None if prompt_mask is None else jnp.asarray(prompt_mask), gen_length)


@functools.partial(jax.jit, static_argnames="gen_length")
def _decode_causal(params: Params, prompt: jax.Array, prompt_mask: jax.Array | None,
                   gen_length: int) -> DecodeResult:
    cfg = params.config
    B, P = prompt.shape
    G = gen_length
    L = P + G
    # Positions count from each row's first real token; padding is masked as keys.
    valid = jnp.ones((B, L), bool) if prompt_mask is None else \
        jnp.concatenate([prompt_mask, jnp.ones((B, G), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)  # [B, L]
    key_mask = None if prompt_mask is None else valid

    zeros = tuple(jnp.zeros((B, L, cfg.n_kv_heads, cfg.head_dim), params.dtype) for _ in range(cfg.n_layers))
    prefill = forward(params, prompt, positions=positions[:, :P], key_mask=key_mask,
                      cache=KVCache(k=zeros, v=zeros), window_start=0, logits_slice=(P - 1, 1), causal=True)
    state = CausalState(
        tokens=jnp.concatenate([prompt, jnp.full((B, G), cfg.pad_id, jnp.int32)], axis=1), n=jnp.int32(0),
        done=jnp.zeros((B,), bool), kv=prefill.cache, revealed_at=jnp.full((B, G), -1, jnp.int32),
        revealed_conf=jnp.zeros((B, G), jnp.float32))
    state = _append(state, prefill.logits[:, 0], prefill.cache, P, cfg)

    def not_finished(state: CausalState):
        return (state.n < G) & ~state.done.all()  # room left, and a row still without its end token

    final = jax.lax.while_loop(not_finished, functools.partial(step, params, positions, key_mask, P), state)
    return _finish(final, P, cfg)


def step(params: Params, positions: jax.Array, key_mask: jax.Array | None, P: int,
         state: CausalState) -> CausalState:
    """One token per row: the last generated token is fed against the cache, the argmax of its logits appended."""
    last = P + state.n - 1  # absolute position of the last generated token
    token = jax.lax.dynamic_slice_in_dim(state.tokens, last, 1, axis=1)  # [B, 1]
    position = jax.lax.dynamic_slice_in_dim(positions, last, 1, axis=1)  # [B, 1]
    out = forward(params, token, positions=position, key_mask=key_mask, cache=state.kv, window_start=last,
                  causal=True)
    return _append(state, out.logits[:, 0], out.cache, P, params.config)


def _append(state: CausalState, logits: jax.Array, kv: KVCache, P: int, cfg) -> CausalState:
    """Writes the greedy choice of `logits` [B, V] as generated token number `state.n`."""
    logits = logits.astype(jnp.float32).at[:, cfg.mask_id].set(-jnp.inf)  # the mask token is never an answer
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B]
    confidence = jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)  # [B]
    n = state.n
    return CausalState(
        tokens=jax.lax.dynamic_update_slice_in_dim(state.tokens, token[:, None], P + n, axis=1), n=n + 1,
        done=state.done | jnp.isin(token, jnp.asarray(cfg.end_ids)), kv=kv,
        revealed_at=jax.lax.dynamic_update_slice_in_dim(state.revealed_at, jnp.full((token.shape[0], 1), n), n, 1),
        revealed_conf=jax.lax.dynamic_update_slice_in_dim(state.revealed_conf, confidence[:, None], n, 1))


def _finish(state: CausalState, P: int, cfg) -> DecodeResult:
    """Everything after a row's first end token becomes EOS (as `decode` does with `stop_at_eos`).

    gen [a, b, EOS, c, d, pad]   ->   [a, b, EOS, EOS, EOS, EOS], nfe 3
    """
    gen = state.tokens[:, P:]
    G = gen.shape[1]
    end = jnp.isin(gen, jnp.asarray(cfg.end_ids)) & (jnp.arange(G) < state.n)
    first_end = jnp.where(end.any(-1), jnp.argmax(end, axis=-1), state.n)  # [B]; state.n when the row has none
    fill = jnp.arange(G)[None, :] > first_end[:, None]  # [B, G]
    return DecodeResult(
        tokens=jnp.where(fill, cfg.eos_id, gen), nfe=jnp.minimum(first_end + 1, state.n), forwards=state.n,
        trace=Trace(step=jnp.where(fill, first_end[:, None], state.revealed_at),
                    confidence=jnp.where(fill, 0.0, state.revealed_conf)))
