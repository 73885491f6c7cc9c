"""Checking and padding prompts before anything is traced."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jdlm.config import ModelConfig
from jdlm.errors import InputError

PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)



def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_prompt(config: ModelConfig, prompt, prompt_mask, gen_length: int):
    """Validates `prompt` [B, P] (or [P]) and `prompt_mask`; returns them as 2-D arrays.

    Value checks (mask token, vocabulary range, left padding) run only on concrete arrays, i.e. outside jit.
    """
    if not hasattr(prompt, "dtype"):
        prompt = np.asarray(prompt)
    if prompt_mask is not None and not hasattr(prompt_mask, "dtype"):
        prompt_mask = np.asarray(prompt_mask)
    if not np.issubdtype(prompt.dtype, np.integer):
        raise InputError(f"prompt must hold integer token ids, got dtype {prompt.dtype}; encode text with "
                         "tokenizer.encode(...) first")
    if prompt.ndim == 1:
        prompt = prompt[None]
        prompt_mask = None if prompt_mask is None else prompt_mask[None]
    if prompt.ndim != 2:
        raise InputError(f"prompt must have shape [batch, length], got {tuple(prompt.shape)}")
    B, P = prompt.shape
    if B == 0 or P == 0:
        raise InputError("the prompt is empty; give at least one token (decoding from nothing is not supported)")
    if P + gen_length > config.max_seq_len:
        raise InputError(f"prompt too long: {P} prompt tokens + gen_length {gen_length} = {P + gen_length} exceeds "
                         f"the model's max_seq_len {config.max_seq_len}; shorten the prompt or lower gen_length")
    if prompt_mask is not None:
        if tuple(prompt_mask.shape) != (B, P):
            raise InputError(f"prompt_mask must have the prompt's shape {(B, P)}, got {tuple(prompt_mask.shape)}")
        if prompt_mask.dtype != bool and not np.issubdtype(prompt_mask.dtype, np.integer):
            raise InputError(f"prompt_mask must be boolean or 0/1 integers (1 = real token, as transformers' "
                             f"attention_mask), got dtype {prompt_mask.dtype}")
    if _concrete(prompt):
        values = np.asarray(prompt)
        if (values == config.mask_id).any():
            raise InputError(f"the prompt contains the mask token (id {config.mask_id}); remove it: only generated "
                             "positions may be masked")
        if values.min() < 0 or values.max() >= config.vocab_size:
            raise InputError(f"prompt token ids must lie in [0, {config.vocab_size}), found {values.min()} .. "
                             f"{values.max()}; was it encoded with this model's tokenizer?")
    if prompt_mask is not None and _concrete(prompt_mask):
        m = np.asarray(prompt_mask)
        if m.dtype != bool:
            if not np.isin(m, (0, 1)).all():
                raise InputError("an integer prompt_mask may hold only 0 (padding) and 1 (real token)")
            m = m.astype(bool)
        if not m.any(axis=1).all():
            raise InputError("a row of prompt_mask has no real token; every prompt needs at least one")
        if (np.diff(m.astype(np.int8), axis=1) < 0).any():
            raise InputError("prompts must be left-padded: in each row of prompt_mask, padding (False) comes "
                             "before the real tokens (True); use jdlm.pad_prompts")
    return prompt, prompt_mask


def bucket_length(n: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> int:
    """The smallest bucket >= n (multiples of the largest bucket beyond it)."""
    for b in buckets:
        if n <= b:
            return b
    top = buckets[-1]
    return -(-n // top) * top


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, length: int | None = None,
                buckets: Sequence[int] | None = PROMPT_BUCKETS) -> tuple[np.ndarray, np.ndarray | None]:
    """Left-pads token lists to one length: `(ids [B, P] int32, mask [B, P] bool or None)`.

    The length is `length`, else the bucket that holds the longest prompt (so that few shapes compile), else the
    longest prompt. The mask is None when no row needs padding.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    P = length or (bucket_length(longest, buckets) if buckets else longest)
    if longest > P:
        raise InputError(f"a prompt has {longest} tokens, more than the padded length {P}")
    ids = np.full((len(prompts), P), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompts), P), dtype=bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = p
        mask[i, P - len(p):] = True
    return ids, (None if mask.all() else mask)
