"""LowConfidence: LLaDA `generate` with remasking="low_confidence" (reveal the most probable proposals)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jdlm.decoding.part import derived, part
from jdlm.decoding.proposals import gumbel_argmax, token_probability
from jdlm.decoding.rule import Rule


@part
class LowConfidence(Rule):
    """Each step reveals the schedule's count of masked positions whose proposal is most probable.

    Proposal: Gumbel-max at the schedule's temperature (argmax when greedy). Confidence: the softmax probability of
    the proposal under the un-noised logits (ML-GSAI/LLaDA generate.py).

    The options of ML-GSAI/LLaDA `generate` (token ids from the model's config, not upstream's hard-coded ones):
      logits_eos_inf: the EOS logit is -inf before the proposal and the confidence: EOS is never proposed.
      confidence_eos_eot_inf: after the proposal, the confidence is computed with the end-of-turn logit (and, when
        greedy, the EOS logit) at -inf: proposals of those tokens get confidence 0 (still revealed when nothing
        else is left), and every other confidence is renormalised without their mass.
    """

    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    end_tokens: tuple[int, int] | None = derived()  # (EOS, EOT) ids, filled in by `for_model`

    def for_model(self, config):
        if not (self.logits_eos_inf or self.confidence_eos_eot_inf):
            return self
        bound = dataclasses.replace(self)
        eot = config.eot_id if config.eot_id is not None else config.eos_id  # models without EOT: EOS twice
        object.__setattr__(bound, "end_tokens", (config.eos_id, eot))
        return bound

    def proposal(self, logits, temperature, key):
        """Proposed tokens [B, W] and the logits [B, W, V] the confidence is computed from."""
        if self.logits_eos_inf:
            logits = logits.at[..., self.end_tokens[0]].set(-jnp.inf)
        tokens = gumbel_argmax(logits, temperature, key)
        if self.confidence_eos_eot_inf:
            banned = list(self.end_tokens[1:]) if temperature is not None else list(self.end_tokens)
            logits = logits.at[..., banned].set(-jnp.inf)
        return tokens, logits

    def propose(self, logits, temperature, key):
        tokens, logits = self.proposal(logits, temperature, key)
        return tokens, token_probability(logits, tokens)
