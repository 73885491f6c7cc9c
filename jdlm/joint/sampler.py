"""JointSampler: a proposer part that reveals a step's tokens in `k` rounds, one full forward pass and then k - 1
passes of a trained sampler head (ADJUST, REFERENCE.md §3.5), so that later rounds see the tokens revealed by
earlier ones instead of sampling every token from the same marginals."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdlm.decoding.part import child, part
from jdlm.decoding.rule import Budget, Rule
from jdlm.errors import StrategyError
from jdlm.joint.head import SamplerHead, head_logits, load_head
from jdlm.model import Params


@part
class JointSampler:
    """Splits each step's reveals into `k` rounds (static). Round 0 uses the full forward's predictions; before
    round r > 0 the head updates them from the block's tokens as they are now (`jdlm.joint.head`).

    Each round runs the strategy's rule on the current predictions, over the block's positions still masked: a
    counted rule reveals its share of the step's count (count c split as evenly as possible, earlier rounds taking
    the extra: c = 4, k = 4 gives 1 a round, ADJUST's setting with `entropy` and steps = gen_length / 4); a rule
    that sets its own count (threshold, ...) reveals what it picks, at least one, in every round. With k = 1 this is
    the rule alone. The rounds' randomness comes from the step's keys folded with the round, round 0 using them
    as they are. NFE counts full forward passes only; the head's k - 1 passes a step are extra (one layer each).

    head: the trained `SamplerHead` (its weights are traced leaves, left out of equality and hashing).
    """

    head: SamplerHead = child(None, compare=False)
    k: int = 2

    def __post_init__(self):
        if not isinstance(self.head, SamplerHead):
            raise StrategyError(f"JointSampler needs a SamplerHead (jdlm.joint.load_head), got {self.head!r}")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise StrategyError(f"JointSampler k must be a positive whole number, got {self.k!r}")

    @classmethod
    def load(cls, directory, k: int = 2, base=None) -> JointSampler:
        """A sampler with the head saved in `directory` (`jdlm train-sampler`, or a packaged model's name); `base`
        (the model's Params or ModelConfig) is checked against what the head was trained for. Given the model's
        Params, the head's weights take the model's dtype (the head computes in it anyway: converted once here,
        not at every pass of a decode)."""
        head = load_head(directory, base)
        if isinstance(base, Params):
            head = head.replace(weights=jax.tree.map(lambda w: w.astype(base.dtype), head.weights))
        return cls(head=head, k=k)

    def check(self, rule: Rule, config) -> None:
        """Raises StrategyError if this sampler cannot run with `rule` on a model of `config`."""
        if rule.attention_layers:
            raise StrategyError(f"a joint sampler needs a rule that does not read attention, got "
                                f"{type(rule).__name__.lower()}")
        if self.head.config != config:
            raise StrategyError(f"the sampler head was trained for another model (d_model {self.head.config.d_model}, "
                                f"vocab {self.head.config.vocab_size}) than this one (d_model {config.d_model}, "
                                f"vocab {config.vocab_size})")

    def round_budget(self, rule: Rule, budget: Budget, r: int) -> Budget:
        """Round r's share of the step's budget (a counted rule's count split over the k rounds)."""
        if not rule.counted:
            return budget
        share = (budget.count * (r + 1)) // self.k - (budget.count * r) // self.k
        return Budget(count=share, fraction=budget.fraction)

    def later_rounds(self, base, rule: Rule, hidden, block_tokens, positions, proposal, confidence, reveal,
                     candidates, budget: Budget, temperature, keys_propose, keys_select):
        """Rounds 1..k-1 after round 0 revealed `reveal`. B batch, W block, D d_model.

        Args:
          base: the model's Params. rule: the strategy's rule. hidden: [B, W, D] the full forward's block states.
          block_tokens: [B, W] the block before this step. positions: [B, W] the block's rotary positions.
          proposal, confidence, reveal: round 0's tokens [B, W] int32, confidences [B, W] float32 and reveals
            [B, W] bool. candidates: [B, W] bool, the positions this step may reveal. budget: the step's whole
            budget. temperature: as for `Rule.propose`. keys_propose, keys_select: the step's keys [B].
        Returns:
          (proposal, confidence, reveal) over all rounds: each revealed position holds the token and confidence of
          the round that revealed it.
        """
        mask_id = base.config.mask_id
        tokens = jnp.where(reveal, proposal, block_tokens)
        for r in range(1, self.k):
            hidden, logits = head_logits(self.head, base, hidden, tokens, positions)
            logits = logits.at[..., mask_id].set(-jnp.inf)
            fold = jax.vmap(lambda key, r=r: jax.random.fold_in(key, r))
            round_proposal, round_confidence = rule.propose(logits, temperature, fold(keys_propose))
            open_ = candidates & ~reveal
            round_confidence = jnp.where(open_, round_confidence, -jnp.inf)
            chosen = rule.select(round_confidence, open_, self.round_budget(rule, budget, r), fold(keys_select))
            chosen &= open_
            tokens = jnp.where(chosen, round_proposal, tokens)
            proposal = jnp.where(chosen, round_proposal, proposal)
            confidence = jnp.where(chosen, round_confidence, confidence)
            reveal |= chosen
        return proposal, confidence, reveal
