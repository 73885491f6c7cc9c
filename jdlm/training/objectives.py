"""Training objectives: the masked-diffusion loss (LLaDA SFT) and the next-token loss of the causal model."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdlm.model import Params, forward


def mdm_noise(key: jax.Array, prompt_len: jax.Array, answer_len: jax.Array, length: int, *, t_min: float = 1e-3,
              ragged_ends: bool = False, suffix_share: float = 0.0):
    """Which positions of each row the masked-diffusion loss masks and scores.

    Each row draws a mask ratio t ~ U(t_min, 1) and masks every answer position (answer and EOS fill) independently
    with probability t; the prompt is never masked.
    - ragged_ends: the row ends at a random length between its content (prompt + answer + first EOS) and `length`,
      biased towards short (content + (length - content) * u**2, u ~ U(0, 1)); keys past the end are hidden and
      their positions neither masked nor scored. As in LLaDA's SFT, where a batch is padded only to its longest
      example, the model sees answers followed by a little EOS fill as well as by a lot; trained on full rows
      alone, it wrote digits where a short canvas's last EOS belong.
    - suffix_share: the share of rows that also mask every answer position from a random cut on, the state of a
      semi-autoregressive decode (blocks before the cut decoded, blocks after it still masked), which independent
      masking almost never draws.
    Each masked position is weighted by 1 / P(masked): 1 / t, and 1 on a masked suffix.

    Args:
      prompt_len, answer_len: [B] int32; length: T, the row length.
    Returns:
      (masked [B, T] bool, weight [B, T] float32, real [B, T] bool: the positions before the row's end).
    """
    B, T = prompt_len.shape[0], length
    k_t, k_mask, k_end, k_cut, k_rows = jax.random.split(key, 5)
    pos = jnp.arange(T)[None, :]
    content = (prompt_len + answer_len)[:, None]
    if ragged_ends:
        u = jax.random.uniform(k_end, (B, 1))
        end = jnp.minimum(content + jnp.floor((T - content) * u * u).astype(jnp.int32), T)
    else:
        end = jnp.full((B, 1), T)
    real = pos < end
    answer = (pos >= prompt_len[:, None]) & real
    t = jax.random.uniform(k_t, (B, 1), minval=t_min, maxval=1.0)
    independent = answer & (jax.random.uniform(k_mask, (B, T)) < t)
    cut = prompt_len[:, None] + jnp.floor(jax.random.uniform(k_cut, (B, 1)) * (end - prompt_len[:, None]))
    suffix = answer & (pos >= cut) & (jax.random.uniform(k_rows, (B, 1)) < suffix_share)
    masked = independent | suffix
    weight = jnp.where(suffix, 1.0, 1.0 / t)
    return masked, weight, real


def mdm_loss(params: Params, tokens: jax.Array, prompt_len: jax.Array, answer_len: jax.Array, key: jax.Array,
             t_min: float = 1e-3, *, ragged_ends: bool = False, suffix_share: float = 0.0):
    """LLaDA's supervised masked-diffusion loss, with the masks of `mdm_noise`.

    Loss: cross-entropy on masked positions times their weight (1 / t), summed per row and divided by the row's
    answer length (answer tokens + first EOS), then averaged over rows (with the defaults, an upper bound on the
    negative log-likelihood of the answer).

    Args:
      tokens: [B, T] int32 rows `prompt ‖ answer ‖ EOS…`; prompt_len, answer_len: [B] int32.
    Returns:
      (loss, metrics dict).
    """
    masked, weight, real = mdm_noise(key, prompt_len, answer_len, tokens.shape[1], t_min=t_min,
                                     ragged_ends=ragged_ends, suffix_share=suffix_share)
    noisy = jnp.where(masked, params.config.mask_id, tokens)
    logits = forward(params, noisy, key_mask=None if not ragged_ends else real).logits.astype(jnp.float32)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1)[..., 0]  # [B, T]
    per_row = jnp.sum(jnp.where(masked, ce * weight, 0.0), axis=1) / answer_len
    n_masked = masked.sum()
    return per_row.mean(), {"masked_ce": jnp.sum(jnp.where(masked, ce, 0.0)) / jnp.maximum(n_masked, 1)}


def ar_loss(params: Params, tokens: jax.Array, prompt_len: jax.Array, answer_len: jax.Array, key: jax.Array):
    """Next-token cross-entropy of a causal model on the answer tokens (answer and its first EOS).

    Args as `mdm_loss` (`key` unused). Returns (loss, metrics dict).
    """
    T = tokens.shape[1]
    logits = forward(params, tokens[:, :-1], causal=True).logits.astype(jnp.float32)  # predicts tokens[:, 1:]
    target = tokens[:, 1:]
    pos = jnp.arange(1, T)[None, :]
    scored = (pos >= prompt_len[:, None]) & (pos < (prompt_len + answer_len)[:, None])
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], axis=-1)[..., 0]
    loss = jnp.sum(jnp.where(scored, ce, 0.0)) / jnp.maximum(scored.sum(), 1)
    return loss, {"answer_ce": loss}


OBJECTIVES = {"mdm": mdm_loss, "ar": ar_loss}
