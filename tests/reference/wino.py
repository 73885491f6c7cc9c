"""A plain PyTorch WINO sampler, written from REFERENCE.md section 3.2.1 (Feng-Hong/WINO-DLLM
`LLaDA/decoding.py::decoding_wino`, commit 9549a1d), one row at a time as upstream (batch 1).

Deliberate deviations (the same as jdlm's, documented in jdlm/decoding/wino.py):
  - top-k picks break ties by the lowest position (`torch.topk` leaves them unspecified);
  - `max_revocations` (None: upstream, no cap) bounds how often a position goes back to the mask;
  - `max_steps_per_block` stops a block that runs too long (None: never), as jdlm's W * (max_revocations + 1).
Probabilities are float64 softmaxes of the model's logits, as upstream.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

LAST_ACCEPT = 30


def shadow_allowed(L: int, W: int, start: int) -> Tensor:
    """[T, T] bool, T = L + W: real queries see real keys only; shadow query j sees every shadow key and every real
    key but its twin start + j."""
    T = L + W
    allowed = torch.zeros(T, T, dtype=torch.bool)
    allowed[:L, :L] = True
    allowed[L:, :L] = True
    allowed[L:, L:] = True
    for j in range(W):
        allowed[L + j, start + j] = False
    return allowed


def _lowest_first(values: Tensor, k: int) -> list[int]:
    """Positions of the k smallest entries of a 1-D tensor, ties to the lowest position."""
    return torch.sort(values, stable=True).indices[:k].tolist()


def wino_row(logits_fn: Callable[[Tensor, Tensor, Tensor], Tensor], prompt: Tensor, *, gen_length: int,
             block_length: int, mask_id: int, threshold: float, threshold_back: float,
             max_revocations: int | None = None, max_steps_per_block: int | None = None) -> tuple[Tensor, int, int]:
    """Greedy WINO for one prompt [P]. `logits_fn(x [1, T], allowed [1, T, T], positions [1, T])` returns logits
    [1, T, V]. Returns (the generation [G], the number of forward passes)."""
    if bool((prompt == mask_id).any()):
        raise ValueError("prompt contains the mask id")
    P, G, W = prompt.shape[0], gen_length, block_length
    L = P + G
    x = torch.full((L,), mask_id, dtype=torch.long)
    x[:P] = prompt
    revoked = torch.zeros(L, dtype=torch.long)
    nfe = 0
    for b in range(G // W):
        start = P + b * W
        block = torch.arange(start, start + W)
        positions = torch.cat([torch.arange(L), block])[None]
        allowed = shadow_allowed(L, W, start)[None]
        last_accept = LAST_ACCEPT
        steps = 0
        while bool((x[block] == mask_id).any()):
            if max_steps_per_block is not None and steps >= max_steps_per_block:
                break
            masked = x[block] == mask_id  # [W]
            n = int(masked.sum())
            cap = min(max(int(n * 0.7), 5), 20)
            ext = torch.cat([x, torch.full((W,), mask_id, dtype=torch.long)])[None]
            logits = logits_fn(ext, allowed, positions)[0]
            nfe += 1
            steps += 1
            p = torch.softmax(logits.to(torch.float64), dim=-1)  # [T, V]
            x0 = p[start:start + W].argmax(-1)  # [W]
            conf = p[start:start + W].gather(-1, x0[:, None])[:, 0]
            conf = torch.where(masked, conf, torch.tensor(float("-inf"), dtype=torch.float64))
            # Draft: strictly above the threshold, the cap most confident if too many, else at least the best.
            accept = conf > threshold
            if int(accept.sum()) > cap:
                keep = torch.sort(-conf, stable=True).indices[:cap]
                accept = torch.zeros(W, dtype=torch.bool)
                accept[keep] = True
            elif not bool(accept.any()):
                accept = torch.zeros(W, dtype=torch.bool)
                accept[int(torch.argmax(conf))] = True
            # Verify (only when more than one is drafted): the twins' probability of each decoded token.
            remask = torch.zeros(W, dtype=torch.bool)
            if int(accept.sum()) > 1:
                decoded = ~masked
                if max_revocations is not None:
                    decoded &= revoked[block] < max_revocations
                twin_p = p[L:].gather(-1, x[block][:, None])[:, 0]
                back = torch.where(decoded, twin_p, torch.tensor(float("inf"), dtype=torch.float64))
                remask = back < threshold_back
                if int(remask.sum()) >= last_accept:
                    remask = torch.zeros(W, dtype=torch.bool)
                    remask[_lowest_first(back, last_accept - 1)] = True
            x[block[accept]] = x0[accept]
            x[block[remask]] = mask_id
            revoked[block[remask]] += 1
            last_accept = int(accept.sum())
    return x[P:], nfe, int(revoked.sum())


def wino_generate(logits_fn, prompt: Tensor, **kwargs) -> tuple[Tensor, list[int], list[int]]:
    """`wino_row` for each row of prompt [B, P]: (generations [B, G], NFE per row, re-masks per row)."""
    rows = [wino_row(logits_fn, row, **kwargs) for row in prompt]
    return torch.stack([r[0] for r in rows]), [r[1] for r in rows], [r[2] for r in rows]
