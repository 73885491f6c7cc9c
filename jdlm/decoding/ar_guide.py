"""ARGuide: a small causal model verifies the diffusion model's drafts left to right (FlashDLM, arXiv 2505.21467).

Each step, the rule proposes a draft for every masked position of the block and picks the positions it would
reveal. The guide, a causal model on the same tokenizer whose weights travel beside the diffusion model's
(`decode(..., guide=params)`), reads the sequence with the drafts filled in from the first mask on, in fixed chunks
of `chunk` positions (one causal forward each, against its own KV cache of the decoded prefix), and finds the first
draft it rejects. The step then reveals only the rule's picks before that position; when none is left it reveals
the first masked position's draft (the authors commit the diffusion model's first draft anyway), so a step that
the rule makes progress in still commits at least one token. A guide that accepts every draft leaves the rule's
reveals unchanged; with a rule that reveals every masked position (`threshold:0`) it is the authors' decoder.

    block     [ a  b  M  M  M  M  M  M ]        M = mask, drafts d0..d5 at the masks
    guide in  [ a  b  d0 d1 d2 d3 d4 d5 ]       causal forward from the position before the first mask
    accepted        .  ✓  ✓  ✗                  first rejection at d2
    rule      [       d0    d2 d3       ]       the rule's picks
    reveal    [       d0                ]       only the picks before the rejection

The guide's KV cache holds the positions whose tokens are final (`valid`); a step feeds from the position before
its first mask (or from `valid`, to catch up after a rule that revealed out of order), writing fresh keys/values
only from there. Decoded positions inside the verified span are context, never rejected. Drafts are compared by
token id: the guide must use the diffusion model's ids (a draft id past the guide's vocabulary is rejected).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from jdlm.decoding.part import knob, part
from jdlm.errors import StrategyError
from jdlm.model import KVCache, Params, forward

ACCEPT = ("argmax", "top2", "threshold")


@flax.struct.dataclass
class GuideState:
    """The guide's part of the decode state. B batch, L sequence length.

    kv:       KVCache [B, L, K, H] per guide layer.
    valid:    [B] int32  positions < valid hold the keys/values of the final tokens.
    fed_end:  [B] int32  end of what the last verification wrote (the next `valid` is at most this).
    nfe:      [B] int32  guide forward passes per row (the prompt's prefill included).
    accepted: [B] int32  drafts the guide accepted (each verified masked position before a rejection).
    """

    kv: KVCache
    valid: jax.Array
    fed_end: jax.Array
    nfe: jax.Array
    accepted: jax.Array


@part
class ARGuide:
    """Verification by a causal model (see the module docstring).

    chunk: positions per guide forward (static; the authors: 32).
    accept: how a draft d passes, given the guide's probabilities p at its position (static):
      "argmax": d is the guide's argmax (the authors' default, "deterministic");
      "top2": d is in the guide's top 2 and p(d) >= ratio * p(top 1) (the authors' "topk_relative");
      "threshold": p(d) > min_prob (the authors' "dynamic_threshold" without its resampling).
    ratio, min_prob: the knobs of "top2" and "threshold" (traced).
    correct: also write the guide's argmax at the rejected position when every masked position before it is
      revealed (static). Upstream's assisted decoder (the default, False) writes only drafts; its first speculative
      decoder (`diff_spec_utils_shifted.py`) writes the correction. With a rule that drafts every position this
      makes the guide's greedy output the target: each step commits the agreeing drafts and one guide token.
    """

    chunk: int = 32
    accept: str = "argmax"
    ratio: float = knob(0.5)
    min_prob: float = knob(0.1)
    correct: bool = False

    def __post_init__(self):
        if not isinstance(self.chunk, int) or isinstance(self.chunk, bool) or self.chunk < 1:
            raise StrategyError(f"ARGuide chunk must be a positive integer, got {self.chunk!r}")
        if self.accept not in ACCEPT:
            raise StrategyError(f"ARGuide accept must be one of {', '.join(ACCEPT)}, got {self.accept!r}")

    @staticmethod
    def check_pair(params: Params, guide: Params) -> None:
        """The guide must be a causal model that shares the diffusion model's token ids: the same mask id, an end
        token the model also ends at (Qwen2.5-Instruct's is Dream's end of turn), no larger vocabulary."""
        g, d = guide.config, params.config
        if not g.causal:
            raise StrategyError("the guide must be a causal (autoregressive) model, e.g. tiny-ar; this one is "
                                "bidirectional")
        if d.causal:
            raise StrategyError("the guided model must be a masked-diffusion model, not a causal one")
        if g.mask_id != d.mask_id or g.eos_id not in d.end_ids or g.vocab_size > d.vocab_size:
            raise StrategyError(f"the guide does not share the model's tokenizer: eos/mask ids {g.eos_id}/"
                                f"{g.mask_id} vs {d.eos_id}/{d.mask_id}, vocabulary {g.vocab_size} vs {d.vocab_size}")

    def init(self, guide: Params, prompt: jax.Array, positions: jax.Array, key_mask: jax.Array | None,
             length: int) -> GuideState:
        """Prefill: one causal forward over the prompt [B, P] fills the guide's cache (positions [B, L])."""
        c = guide.config
        B, P = prompt.shape
        zeros = tuple(jnp.zeros((B, length, c.n_kv_heads, c.head_dim), guide.dtype) for _ in range(c.n_layers))
        out = forward(guide, jnp.minimum(prompt, c.vocab_size - 1), positions=positions[:, :P], key_mask=key_mask,
                      cache=KVCache(k=zeros, v=zeros), window_start=0, logits_slice=(P - 1, 1), causal=True)
        ones = jnp.ones((B,), jnp.int32)
        return GuideState(kv=out.cache, valid=P * ones, fed_end=P * ones, nfe=ones, accepted=0 * ones)

    def verify(self, guide: Params, state: GuideState, tokens, positions, key_mask, proposal, reveal,
               block_start, mask_id: int, prompt_len: int = 0):
        """Cuts the rule's reveals at the guide's first rejection.

        Args:
          tokens: [B, L] before this step's reveals; positions [B, L]; key_mask [B, L] or None.
          proposal: [B, W] the rule's drafts for the block; reveal: [B, W] bool, the rule's picks.
          prompt_len: P (static). When one chunk reaches from P - 1 to the end (chunk > L - P), every verification
            takes one chunk, and it runs as one, without a loop: a GPU runs a while loop by reading its condition
            back to the host at each iteration. 0: always the loop.
        Returns:
          (reveal [B, W], proposal [B, W] with the corrections written when `correct`, GuideState).
        """
        B, L = tokens.shape
        W = proposal.shape[1]
        C = min(self.chunk, L)
        V = guide.config.vocab_size
        block_end = block_start + W
        masked = tokens == mask_id  # [B, L]
        block_masked = jax.lax.dynamic_slice_in_dim(masked, block_start, W, axis=1)
        drafts = jax.lax.dynamic_update_slice_in_dim(
            tokens, jnp.where(block_masked, proposal, jax.lax.dynamic_slice_in_dim(tokens, block_start, W, 1)),
            block_start, axis=1)  # [B, L]: the sequence with the block's drafts filled in
        first_mask = jnp.where(masked.any(-1), jnp.argmax(masked, axis=-1), L)  # [B]
        verifying = block_masked.any(-1) & reveal.any(-1)  # [B]
        fed = jnp.minimum(drafts, V - 1)

        def row_forward(tok, pos, km, kv, start, write_from):
            # XLA's attention: under vmap, jax's cuDNN attention batches its broadcast mask wrongly (a reshape
            # error on GPU, jax 0.11.2), and the guide's chunks are a few queries against its cache.
            one = jax.tree.map(lambda a: a[None], kv)
            out = forward(guide, jax.lax.dynamic_slice_in_dim(tok, start, C)[None],
                          positions=jax.lax.dynamic_slice_in_dim(pos, start, C)[None],
                          key_mask=None if km is None else km[None], cache=one, window_start=start,
                          write_from=write_from, causal=True, attention_impl="xla")
            return out.logits[0].astype(jnp.float32), jax.tree.map(lambda a: a[0], out.cache)

        def chunk(carry):
            w, kv, reject, fix, going, nfe, fed_end, accepted = carry
            start = jnp.minimum(w, L - C)  # a window must fit; positions before w keep their keys/values
            logits, kv = jax.vmap(row_forward, in_axes=(0, 0, None if key_mask is None else 0, 0, 0, 0))(
                fed, positions, key_mask, kv, start, jnp.where(going, w, L))
            target = start[:, None] + 1 + jnp.arange(C)  # [B, C]: the position each query predicts
            inside = jnp.clip(target, 0, L - 1)
            draft = jnp.take_along_axis(drafts, inside, axis=1)
            checked = going[:, None] & (target > w[:, None]) & (target >= first_mask[:, None]) & \
                (target < block_end) & jnp.take_along_axis(masked, inside, axis=1)
            ok = self.accepts(logits.at[..., mask_id].set(-jnp.inf), draft, V)
            failed = checked & ~ok
            first_fail = jnp.where(failed.any(-1), jnp.take_along_axis(target, jnp.argmax(failed, -1)[:, None],
                                                                       axis=1)[:, 0], L)
            passed = (checked & ok & (target < first_fail[:, None])).sum(-1)
            guess = jnp.argmax(logits.at[..., mask_id].set(-jnp.inf), axis=-1).astype(jnp.int32)  # [B, C]
            fix = jnp.where(going & failed.any(-1), guess[jnp.arange(B), jnp.argmax(failed, -1)], fix)
            return (start + C, kv, jnp.where(going, jnp.minimum(reject, first_fail), reject), fix,
                    going & ~failed.any(-1) & (start + C < block_end - 1), nfe + going,
                    jnp.where(going, start + C, fed_end), accepted + passed)

        w0 = jnp.minimum(state.valid, first_mask - 1)
        carry = (w0, state.kv, jnp.full((B,), L), jnp.zeros((B,), jnp.int32), verifying, state.nfe, state.valid,
                 state.accepted)
        # A chunk starts at min(w0, L - C) with w0 >= P - 1 (the guide's cache is valid up to at least P, and masks
        # lie after the prompt), so with C > L - P it starts at L - C and reaches the end: one chunk always does.
        # Rows that do not verify change nothing in it (no writes, no counts), as in a loop that skips them.
        one_chunk = prompt_len > 0 and C > L - prompt_len
        if one_chunk:
            _, kv, reject, fix, _, nfe, fed_end, accepted = chunk(carry)
        else:
            _, kv, reject, fix, _, nfe, fed_end, accepted = jax.lax.while_loop(lambda c: c[4].any(), chunk, carry)

        at = block_start + jnp.arange(W)  # [W] absolute positions of the block
        kept = reveal & (at[None, :] < reject[:, None])
        first = block_masked & (at[None, :] == first_mask[:, None])
        if self.correct:  # the guide's token at the rejection, once everything before it is revealed
            at_reject = block_masked & (at[None, :] == reject[:, None])  # [B, W]
            gap = (block_masked & ~kept & (at[None, :] < reject[:, None])).any(-1)
            write = verifying & at_reject.any(-1) & ~gap
            proposal = jnp.where(write[:, None] & at_reject, fix[:, None], proposal)
            kept = kept | (write[:, None] & at_reject)
            fed_end = jnp.where(write, jnp.minimum(fed_end, reject), fed_end)  # its keys/values came from the draft
        kept = jnp.where((verifying & ~kept.any(-1))[:, None], first, kept)
        return kept, proposal, GuideState(kv=kv, valid=state.valid, fed_end=fed_end, nfe=nfe, accepted=accepted)

    def settle(self, state: GuideState, tokens, mask_id: int) -> GuideState:
        """After the step's writes: the cache is right up to the first mask and never past what was fed."""
        masked = tokens == mask_id
        first_mask = jnp.where(masked.any(-1), jnp.argmax(masked, axis=-1), tokens.shape[1])
        return state.replace(valid=jnp.minimum(first_mask, state.fed_end).astype(jnp.int32))

    def accepts(self, logits, draft, vocab: int):
        """[B, C] bool: does each draft pass, given the guide's logits [B, C, V] at the position before it."""
        inside = draft < vocab
        d = jnp.minimum(draft, vocab - 1)[..., None]
        if self.accept == "argmax":
            return inside & (jnp.argmax(logits, axis=-1) == draft)
        probs = jax.nn.softmax(logits, axis=-1)
        p = jnp.take_along_axis(probs, d, axis=-1)[..., 0]
        if self.accept == "threshold":
            return inside & (p > self.min_prob)
        top, ids = jax.lax.top_k(probs, 2)
        return inside & ((ids == draft[..., None]).any(-1)) & (p >= self.ratio * top[..., 0])
