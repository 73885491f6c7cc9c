"""A plain NumPy version of ADJUST's greedy inference (arXiv 2509.22738, REFERENCE.md §3.5), test reference for
`jdlm.joint.JointSampler`.

Written from the paper's description, one position at a time, with no jdlm decoding code: the base model's forward
(`jdlm.model.forward`, itself checked against PyTorch in test_model_parity) gives h_0 and p_0; then K times: the
masked position with the lowest entropy under the current p (ties: lowest position) takes its argmax token, and,
if more rounds follow, the sampler head (re-implemented here in NumPy from its definition) updates h and p.
One block spans the whole generation.
"""

from __future__ import annotations

import numpy as np

from jdlm.model import forward


def _rms(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope(x, positions, theta):  # x [T, heads, H], positions [T]
    H = x.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, H, 2, dtype=np.float32) / H))
    angles = positions[:, None].astype(np.float32) * inv_freq
    cos, sin = np.cos(np.concatenate([angles, angles], -1))[:, None], np.sin(np.concatenate([angles, angles], -1))[:, None]
    rotated = np.concatenate([-x[..., H // 2:], x[..., :H // 2]], axis=-1)
    return x * cos + rotated * sin


def head_step(weights, config, embed_table, hidden, tokens, positions):
    """h_k [T, D] from h_{k-1} [T, D], the tokens [T] and positions [T] (NumPy float32)."""
    w = {k: np.asarray(v, np.float32) for k, v in weights.items() if k != "layer"}
    layer = {k: np.asarray(v, np.float32) for k, v in weights["layer"].items()}
    eps = config.norm_eps
    e = np.asarray(embed_table, np.float32)[tokens]
    x = np.concatenate([_rms(e, w["embed_norm"], eps), _rms(hidden, w["hidden_norm"], eps)], -1) @ w["fuse"]
    h = _rms(x, layer["attn_norm"], eps)
    q = _rope(np.einsum("td,dnh->tnh", h, layer["q"]), positions, config.rope_theta)
    k = _rope(np.einsum("td,dkh->tkh", h, layer["k"]), positions, config.rope_theta)
    v = np.einsum("td,dkh->tkh", h, layer["v"])
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("tnh,snh->nts", q, k) / np.sqrt(q.shape[-1])
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    x = x + np.einsum("tnh,nhd->td", np.einsum("nts,snh->tnh", probs, v), layer["o"])
    h = _rms(x, layer["mlp_norm"], eps)
    gate = h @ layer["gate"]
    x = x + (gate / (1 + np.exp(-gate)) * (h @ layer["up"])) @ layer["down"]
    return _rms(x, w["out_norm"], eps) + hidden


def _logits(params, hidden):
    w, cfg = params.weights, params.config
    out = _rms(hidden, np.asarray(w["final_norm"], np.float32), cfg.norm_eps)
    head = np.asarray(w["embed"], np.float32).T if cfg.tie_embeddings else np.asarray(w["lm_head"], np.float32)
    logits = out @ head
    logits[:, cfg.mask_id] = -np.inf
    return logits


def adjust_greedy(params, head_weights, prompt, gen_length: int, k: int, use_head: bool = True):
    """Greedy ADJUST decode of one prompt [P]: (generated tokens [G], full forward passes).

    use_head=False is the paper's "marginal" baseline: k tokens a forward from one set of predictions.
    """
    cfg = params.config
    P, G = len(prompt), gen_length
    shift = int(cfg.logits_shift)
    tokens = np.concatenate([np.asarray(prompt), np.full(G, cfg.mask_id)]).astype(np.int32)
    positions = np.arange(P, P + G)
    nfe = 0
    while (tokens[P:] == cfg.mask_id).any():
        out = forward(params, tokens[None], return_hidden=True)
        nfe += 1
        hidden = np.asarray(out.hidden[0, P - shift:P - shift + G], np.float32)  # index i predicts position P + i
        logits = _logits(params, hidden)
        for j in range(k):
            masked = np.flatnonzero(tokens[P:] == cfg.mask_id)
            if not len(masked):
                break
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            negative_entropy = np.sum(p * np.log(p + 1e-10), axis=-1)
            best = masked[np.argmax(negative_entropy[masked])]  # argmax: the first of equal values
            tokens[P + best] = np.argmax(p[best])
            if j < k - 1 and use_head:
                hidden = head_step(head_weights, cfg, params.weights["embed"], hidden, tokens[P:], positions)
                logits = _logits(params, hidden)
    return tokens[P:], nfe
