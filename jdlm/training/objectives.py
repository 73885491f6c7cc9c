"""Training objectives: the masked-diffusion loss (LLaDA SFT) and the next-token loss of the causal model."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdlm.model import Params, forward


def mdm_loss(params: Params, tokens: jax.Array, prompt_len: jax.Array, answer_len: jax.Array, key: jax.Array,
             t_min: float = 1e-3):
    """LLaDA's supervised masked-diffusion loss.

    Each row draws a mask ratio t ~ U(t_min, 1); every position from the answer start on (answer and EOS fill) is
    masked independently with probability t; the prompt is never masked. Loss: cross-entropy on masked positions
    weighted by 1/t, summed per row and divided by the row's answer length (answer tokens + first EOS), then
    averaged over rows (an upper bound on the negative log-likelihood of the answer).

    Args:
      tokens: [B, T] int32 rows `prompt ‖ answer ‖ EOS…`; prompt_len, answer_len: [B] int32.
    Returns:
      (loss, metrics dict).
    """
    B, T = tokens.shape
    k_t, k_mask = jax.random.split(key)
    t = jax.random.uniform(k_t, (B, 1), minval=t_min, maxval=1.0)
    answer = jnp.arange(T)[None, :] >= prompt_len[:, None]  # [B, T]
    masked = answer & (jax.random.uniform(k_mask, (B, T)) < t)
    noisy = jnp.where(masked, params.config.mask_id, tokens)
    logits = forward(params, noisy).logits.astype(jnp.float32)  # [B, T, V]
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1)[..., 0]  # [B, T]
    per_row = jnp.sum(jnp.where(masked, ce / t, 0.0), axis=1) / answer_len
    n_masked = masked.sum()
    return per_row.mean(), {"masked_ce": jnp.sum(jnp.where(masked, ce, 0.0)) / jnp.maximum(n_masked, 1)}


def ar_loss(params: Params, tokens: jax.Array, prompt_len: jax.Array, answer_len: jax.Array, key: jax.Array):
    """Next-token cross-entropy of a causal model on the answer tokens (answer and its first EOS).

    Args as `mdm_loss` (`key` unused). Returns (loss, metrics dict).
    """
    B, T = tokens.shape
    logits = forward(params, tokens[:, :-1], causal=True).logits.astype(jnp.float32)  # predicts tokens[:, 1:]
    target = tokens[:, 1:]
    pos = jnp.arange(1, T)[None, :]
    scored = (pos >= prompt_len[:, None]) & (pos < (prompt_len + answer_len)[:, None])
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], axis=-1)[..., 0]
    loss = jnp.sum(jnp.where(scored, ce, 0.0)) / jnp.maximum(scored.sum(), 1)
    return loss, {"answer_ce": loss}


OBJECTIVES = {"mdm": mdm_loss, "ar": ar_loss}
