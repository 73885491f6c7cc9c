"""FlashDLM (arXiv 2505.21467): FreeCache and AR-guided diffusion, written out plainly on tests/reference/torch_dlm.py.

Upstream followed: ZhanqiuHu/flash-dlm-experimental, guided_diffusion/diff_spec_utils_assisted.py
(`assisted_block_diffusion_generate`, `ARVerifier.batch_verify`, `_verify_deterministic`, `_verify_topk_relative`,
`_verify_dynamic_threshold`) at the commit mirrored on 2026-11-26. Upstream is batch 1 and strictly left to right
with one block; here the decode is jdlm's semi-autoregressive block loop (a block loops until it has no mask) with
the rule's reveals cut at the guide's first rejection, which with one block and a rule that reveals every masked
position is upstream's loop. Batch 1 only, no padding, greedy.

FreeCache: the first forward is full and stores every position's keys/values; each later forward feeds
x[clean - shift:end] (Dream: one more slot, whose output predicts position `clean`), attends to the stored keys/values
of [0, clean) and its own fresh ones, stores them at [clean, end), and drops [end, L) (end = L except for the
sliding window). The guide recomputes a full causal forward for every chunk instead of keeping a KV cache, so the
cache bookkeeping of jdlm is checked, not copied.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.reference.samplers import (
    count_schedule,
    shift_logits,
    threshold_select,
    topk_stable,
)
from tests.reference.torch_dlm import RefConfig, RefModel


def frozen_forward(model, x: Tensor, kv: list, feed_start: int, clean: int, end: int) -> tuple[Tensor, list]:
    """Raw logits [B, end - feed_start, V] of x[:, feed_start:end] over stored keys/values [0, clean) and fresh ones
    [clean, end); returns the logits and kv with [clean, end) replaced. model: a RefModel."""
    positions = torch.arange(feed_start, end).expand(x.shape[0], -1)
    h = F.embedding(x[:, feed_start:end], model.params["embed"])
    new_kv = []
    for i in range(model.config.n_layers):
        q, k, v = model._qkv(i, h, positions)
        k_old, v_old = kv[i]
        keys = torch.cat([k_old[:, :, :clean], k[:, :, clean - feed_start:]], dim=2)
        values = torch.cat([v_old[:, :, :clean], v[:, :, clean - feed_start:]], dim=2)
        new_kv.append((torch.cat([keys, k_old[:, :, end:]], dim=2), torch.cat([values, v_old[:, :, end:]], dim=2)))
        h = model._attend_and_mlp(i, h, q, keys, values, None)
    return model._head(h), new_kv


def causal_logits(model, x: Tensor) -> Tensor:
    """A full causal forward of a RefModel's weights: logits [B, T, V], query i sees keys <= i."""
    B, T = x.shape
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool)).expand(B, T, T)
    h = F.embedding(x, model.params["embed"])
    positions = torch.arange(T).expand(B, T)
    for i in range(model.config.n_layers):
        q, k, v = model._qkv(i, h, positions)
        h = model._attend_and_mlp(i, h, q, k, v, allowed)
    return model._head(h)


def freecache_bounds(policy: str, x: Tensor, P: int, block_start: int, block_length: int, *, unit: int, window: int,
                     mask_id: int) -> tuple[int, int]:
    """(clean, end) of a FreeCache policy for row 0."""
    L = x.shape[1]
    if policy == "prompt":
        return P, L
    if policy == "block":
        return block_start, L
    if policy == "boundary":
        masked = (x[0, P:] == mask_id).nonzero()
        first = int(masked[0]) if len(masked) else L - P
        return P + first // unit * unit, L
    size = min(L, 2 * window + block_length)
    start = min(max(block_start - window, 0), L - size)
    return start, start + size


def guide_cut(guide, x: Tensor, drafts: Tensor, chosen: Tensor, block_start: int, block_end: int, *, chunk: int,
              accept: str, ratio: float, min_prob: float, mask_id: int,
              correct: bool = False) -> tuple[Tensor, int, int, dict]:
    """Cuts `chosen` ([L] bool, the rule's picks) at the guide's first rejection; returns (chosen, guide forwards,
    drafts accepted, {position: the guide's token} for a correction, written when `correct` and every masked
    position before the rejection is chosen).

    Chunks as upstream: the first feeds [s - 1, s - 1 + chunk) with s the first mask, each predicting the next
    position; the next chunk starts where the previous ended; stop at the first rejected draft or once the block's
    last position is predicted."""
    L = x.shape[1]
    filled = torch.where(x[0] == mask_id, drafts, x[0])  # [L]
    s = int((x[0] == mask_id).nonzero()[0])
    reject, calls, accepted, q0, guess = L, 0, 0, s - 1, None
    while True:
        logits = causal_logits(guide, filled[None, :])[0].clone()  # recomputed in full: no cache to get wrong
        logits[:, mask_id] = float("-inf")
        calls += 1
        probs = torch.softmax(logits, dim=-1)
        for q in range(q0, min(q0 + chunk, L)):
            t = q + 1
            if t >= block_end or t >= L:
                break
            if x[0, t] != mask_id:
                continue
            d = int(filled[t])
            if accept == "argmax":
                ok = int(torch.argmax(logits[q])) == d
            elif accept == "threshold":
                ok = bool(probs[q, d] > min_prob)
            else:
                top = torch.topk(probs[q], 2)
                ok = d in top.indices.tolist() and bool(probs[q, d] >= ratio * top.values[0])
            if not ok:
                reject, guess = t, int(torch.argmax(logits[q]))
                break
            accepted += 1
        q0 += chunk
        if reject < L or q0 >= block_end - 1 or q0 >= L:
            break
    kept = chosen.clone()
    kept[reject:] = False
    fixes = {}
    masked = x[0] == mask_id
    if correct and chosen.any() and reject < L and not (masked[:reject] & ~kept[:reject]).any():
        kept[reject], fixes = True, {reject: guess}
    if chosen.any() and not kept.any():
        kept[s] = True
    return kept, calls, accepted, fixes


@torch.no_grad()
def flashdlm_generate(model, prompt: Tensor, *, gen_length: int, block_length: int, mask_id: int, rule: str,
                      threshold: float | None = None, steps: int | None = None, shift: bool = False,
                      cache: str | None = None, unit: int | None = None, window: int = 128, guide=None,
                      chunk: int = 32, accept: str = "argmax", ratio: float = 0.5, min_prob: float = 0.1,
                      correct: bool = False) -> tuple[Tensor, int, int]:
    """Greedy block decoding with an optional FreeCache policy (`cache`) and an optional AR guide.

    rule "threshold" (every masked position of the block with float64 confidence >= threshold, at least the best)
    or "counts" (LLaDA's per-step counts over `steps`; with a guide the block then loops until full, reusing the
    last count). model and guide: RefModels with the mask logit excluded by the caller's wrapper (`.model` is the
    RefModel). Returns (x [1, L], diffusion forwards, guide forwards incl. the prompt prefill).
    """
    ref = model.model
    B, P = prompt.shape
    L = P + gen_length
    x = torch.full((B, L), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    nfe, guide_nfe, kv = 0, 1 if guide is not None else 0, None
    for b in range(gen_length // block_length):
        start, end = P + b * block_length, P + (b + 1) * block_length
        counts = count_schedule(int((x[0, start:end] == mask_id).sum()), steps * block_length // gen_length) \
            if rule == "counts" else None
        i = 0
        while bool((x[0, start:end] == mask_id).any()):
            if cache is None:
                raw = model(x)
                logits = shift_logits(raw) if shift else raw
                offset = 0
            elif kv is None:
                raw, kv = model.forward_full_with_cache(x)
                logits = shift_logits(raw) if shift else raw
                offset = 0
            else:
                clean, stop = freecache_bounds(cache, x, P, start, block_length, unit=unit or block_length,
                                               window=window, mask_id=mask_id)
                # The block's logits are read from the window, which therefore starts at the block at the latest.
                feed = clean if cache == "window" else min(clean, start) - int(shift)
                raw, kv = frozen_forward(ref, x, kv, feed, clean, stop)
                raw[..., mask_id] = -1e30
                logits = shift_logits(raw) if shift else raw
                offset = feed
            nfe += 1
            block_logits = logits[0, start - offset:end - offset]  # [W, V]
            x0 = torch.argmax(block_logits, dim=-1)
            masked = x[0, start:end] == mask_id
            p = torch.softmax(block_logits.to(torch.float64), dim=-1)
            conf = torch.where(masked, p.gather(-1, x0[:, None])[:, 0], torch.tensor(float("-inf"), dtype=p.dtype))
            if rule == "threshold":
                pick = threshold_select(conf, masked, threshold)
            else:
                pick = torch.zeros_like(masked)
                pick[topk_stable(conf, counts[min(i, len(counts) - 1)])] = True
            chosen = torch.zeros(L, dtype=torch.bool)
            chosen[start:end] = pick & masked
            if guide is not None:
                drafts = torch.zeros(L, dtype=torch.long)
                drafts[start:end] = x0
                chosen, calls, _, fixes = guide_cut(guide, x, drafts, chosen, start, end, chunk=chunk,
                                                    accept=accept, ratio=ratio, min_prob=min_prob, mask_id=mask_id,
                                                    correct=correct)
                guide_nfe += calls
                for pos, token in fixes.items():
                    x0[pos - start] = token
            x[0, start:end] = torch.where(chosen[start:end], x0, x[0, start:end])
            i += 1
            if rule == "counts" and guide is None and i >= len(counts):
                break
    return x, nfe, guide_nfe


def ref_model_from_params(params) -> RefModel:
    """A RefModel holding the weights of a jdlm LLaDA-layout `Params` (no biases, untied), e.g. `tiny` / `tiny-ar`."""
    c = params.config
    if c.qkv_bias or c.tie_embeddings or c.head_dim * c.n_heads != c.d_model:
        raise ValueError("ref_model_from_params reads untied LLaDA-layout weights with head_dim = d_model / n_heads")
    w = params.weights

    def t(a):
        return torch.tensor(np.asarray(a, np.float32))

    D = c.d_model
    p = {"embed": t(w["embed"]), "final_norm": t(w["final_norm"]), "head": t(w["lm_head"]).T.contiguous()}
    for i, layer in enumerate(w["layers"]):
        p.update({f"{i}.attn_norm": t(layer["attn_norm"]), f"{i}.mlp_norm": t(layer["mlp_norm"]),
                  f"{i}.q": t(layer["q"]).reshape(D, -1).T.contiguous(),
                  f"{i}.k": t(layer["k"]).reshape(D, -1).T.contiguous(),
                  f"{i}.v": t(layer["v"]).reshape(D, -1).T.contiguous(),
                  f"{i}.o": t(layer["o"]).reshape(-1, D).T.contiguous(), f"{i}.gate": t(layer["gate"]).T.contiguous(),
                  f"{i}.up": t(layer["up"]).T.contiguous(), f"{i}.down": t(layer["down"]).T.contiguous()})
    config = RefConfig(family="llada", d_model=D, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, n_layers=c.n_layers,
                       mlp_hidden=c.mlp_hidden, vocab=c.vocab_size, rope_theta=c.rope_theta, eps=c.norm_eps,
                       mask_id=c.mask_id, tied=False, qkv_bias=False)
    return RefModel(config, p)
