"""Classifier-free guidance (LLaDA `generate`'s cfg_scale)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdlm.decoding.part import knob, part
from jdlm.errors import StrategyError


@part
class Guidance:
    """Runs every step twice in one batch, with and without the prompt, and sharpens towards the prompt:
    `logits = uncond + (cfg_scale + 1) * (cond - uncond)`. The unconditional copy has every prompt position
    (padding included) replaced by the mask token. One forward pass (NFE) per step, at twice the batch.
    cfg_scale is traced: a new scale reuses the compiled program.
    """

    cfg_scale: float = knob(1.0)

    def __post_init__(self):
        if not 0 < self.cfg_scale < float("inf"):
            raise StrategyError(f"cfg_scale must be a finite number > 0 (leave guidance=None for no guidance), "
                                f"got {self.cfg_scale}")

    @staticmethod
    def double(tokens: jax.Array, prompt_len: int, mask_id: int) -> jax.Array:
        """[B, L] -> [2B, L]: the conditional rows, then the same rows with the prompt masked."""
        uncond = tokens.at[:, :prompt_len].set(mask_id)
        return jnp.concatenate([tokens, uncond], axis=0)

    def combine(self, logits: jax.Array) -> jax.Array:
        """[2B, W, V] -> [B, W, V]."""
        cond, uncond = jnp.split(logits, 2, axis=0)
        return uncond + (self.cfg_scale + 1) * (cond - uncond)
