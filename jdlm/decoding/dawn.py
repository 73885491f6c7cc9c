"""Dawn: dependency-aware parallel decoding (reveal what the attention graph says can go together)."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from jdlm.decoding.part import knob, part
from jdlm.decoding.proposals import gumbel_argmax, token_probability
from jdlm.decoding.rule import Context, Rule, best_one
from jdlm.errors import StrategyError


# Behaviour follows lizhuo-luo/DAWN llada/generate.py `get_transfer_index_dawn` and llada/gdllm_utils.py
# (`detect_attn_sinks_`, `select_parallel_tokens_conflict_mis`) at commit ab42898.
@part
class Dawn(Rule):
    """Each step reveals, among the block's masked positions (confidence c: the proposal's softmax probability):

      (a) every position with c >= `sure`;
      (b) every position with c >= `induce` whose query attends (>= `edge`) to an already revealed key (prompt,
          earlier blocks, the block) whose own top probability is >= `sure`;
      (c) among the rest with c >= `low`, none of them attending to (or attended by) a position in both (a) and
          (b), a greedy maximal independent set by confidence of the graph whose edges join positions with
          attention >= `edge` either way;
    and, when that is nothing, the single most confident position.

    Attention: softmax probabilities averaged over heads and the last `attention_layers` layers; a key whose
    attention, averaged over every query of the forward, exceeds `sink` is an attention sink and is dropped, as is
    each position's attention to itself.

    Differences from upstream: jdlm decides each row alone (upstream skips (c) for every row when one row has no
    candidate for it, and adds the fallback to every row when one row reveals nothing); confidences are float32
    (upstream float64). With a cache, sinks are found among the window's queries, and positions the cached forward
    did not recompute have top probability 0 (they cannot support (b)); without one (the authors' setting) it is
    exact.
    """

    counted: ClassVar[bool] = False
    sure: float = knob(0.9)
    induce: float = knob(0.7)
    low: float = knob(0.7)
    edge: float = knob(0.07)
    sink: float = knob(0.01)
    attention_layers: int = 4

    def __post_init__(self):
        for name in ("sure", "induce", "low", "edge", "sink"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise StrategyError(f"dawn {name} must be in (0, 1], got {value}")
        if not isinstance(self.attention_layers, int) or self.attention_layers < 1:
            raise StrategyError(f"attention_layers must be a positive integer, got {self.attention_layers!r}")

    def propose(self, logits, temperature, key):
        tokens = gumbel_argmax(logits, temperature, key)
        return tokens, token_probability(logits, tokens)

    def select_attending(self, confidence, candidates, budget, key, context, memory):
        return dawn_reveal(self, confidence, candidates, context), memory


def filtered_attention(context: Context, sink) -> jax.Array:
    """The block's attention [B, W, L] with sink keys (column mean > `sink`) and each query's own key zeroed."""
    W, L = context.attention.shape[1:]
    sinks = context.column_mean > sink  # [B, L]
    own = (context.block_start + jnp.arange(W))[:, None] == jnp.arange(L)[None, :]  # [W, L]
    return jnp.where(sinks[:, None, :] | own[None], 0.0, context.attention)


def dawn_reveal(dawn: Dawn, confidence, candidates, context: Context) -> jax.Array:
    """Dawn's reveal [B, W] bool; confidence [B, W] (-inf outside `candidates`)."""
    B, W, L = context.attention.shape
    edge = filtered_attention(context, dawn.sink) >= dawn.edge  # [B, W(query), L(key)]
    sure = candidates & (confidence >= dawn.sure)  # (a)
    before_end = jnp.arange(L) < context.block_start + W
    supports = ~context.masked & before_end & (context.key_confidence >= dawn.sure)  # [B, L] revealed, confident
    induced = candidates & (confidence >= dawn.induce) & (edge & supports[:, None, :]).any(-1)  # (b)
    in_block = context.block_keys(edge)  # [B, W(query), W(key)]
    near_both = (in_block & (sure & induced)[:, None, :]).any(-1)  # attends to a position in (a) and (b)
    nodes = candidates & (confidence >= dawn.low) & ~sure & ~induced & ~near_both
    conflict = in_block | jnp.swapaxes(in_block, 1, 2)
    conflict &= nodes[:, :, None] & nodes[:, None, :]
    reveal = sure | induced | independent_set(confidence, nodes, conflict)  # (c)
    return reveal | (~reveal.any(-1, keepdims=True) & best_one(confidence, candidates))


def independent_set(confidence, nodes, conflict) -> jax.Array:
    """Greedy maximal independent set [B, W] bool: repeatedly take the most confident node left (lowest position
    on ties) and drop its neighbours. nodes [B, W] bool, conflict [B, W, W] bool (symmetric)."""
    W = nodes.shape[-1]

    def take(_, carry):
        chosen, left = carry
        best = jnp.argmax(jnp.where(left, confidence, -jnp.inf), axis=-1)  # [B]
        one = left.any(-1, keepdims=True) & (jnp.arange(W) == best[:, None])  # [B, W]
        neighbours = (conflict & one[:, :, None]).any(1)
        return chosen | one, left & ~one & ~neighbours

    chosen, _ = jax.lax.fori_loop(0, W, take, (jnp.zeros_like(nodes), nodes))
    return chosen
