"""Explicit tensor-name tables: Hugging Face name -> (jdlm weights path, layout transform), per family."""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from jdlm.config import ModelConfig


class Entry(NamedTuple):
    """One source tensor: its HF name and shape, where it goes in `Params.weights` and how it is reshaped."""

    source: str
    source_shape: tuple[int, ...]
    target: tuple  # path into the weights pytree, e.g. ("layers", 3, "q")
    transform: Callable[[np.ndarray], np.ndarray]


def _kinds(c: ModelConfig) -> dict[str, tuple[tuple[int, ...], Callable]]:
    """Each kind of weight: its PyTorch shape and the reshape into jdlm's `x @ W` layout."""
    D, N, K, H, F, V = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.mlp_hidden, c.vocab_size
    return {
        "vector": ((D,), lambda a: a),
        "embed": ((V, D), lambda a: a),
        "head": ((V, D), lambda a: a.T),  # [V, D] -> [D, V]
        "q": ((N * H, D), lambda a: a.T.reshape(D, N, H)),
        "kv": ((K * H, D), lambda a: a.T.reshape(D, K, H)),
        "q_bias": ((N * H,), lambda a: a.reshape(N, H)),
        "kv_bias": ((K * H,), lambda a: a.reshape(K, H)),
        "o": ((D, N * H), lambda a: a.T.reshape(N, H, D)),
        "mlp_in": ((F, D), lambda a: a.T),  # [F, D] -> [D, F]
        "mlp_out": ((D, F), lambda a: a.T),  # [D, F] -> [F, D]
    }


class Layout(NamedTuple):
    """A family's names: global tensors, the output head (absent when tied), and the per-layer tensors
    (`layer_prefix` formatted with the layer index). Values are (jdlm name, kind)."""

    globals: dict[str, tuple[str, str]]
    head: str
    layer_prefix: str
    layer: dict[str, tuple[str, str]]


LLADA = Layout(
    globals={"model.transformer.wte.weight": ("embed", "embed"),
             "model.transformer.ln_f.weight": ("final_norm", "vector")},
    head="model.transformer.ff_out.weight",
    layer_prefix="model.transformer.blocks.{i}.",
    layer={"attn_norm.weight": ("attn_norm", "vector"), "q_proj.weight": ("q", "q"), "k_proj.weight": ("k", "kv"),
           "v_proj.weight": ("v", "kv"), "attn_out.weight": ("o", "o"), "ff_norm.weight": ("mlp_norm", "vector"),
           "ff_proj.weight": ("gate", "mlp_in"),  # SiLU is applied to ff_proj: it is the gate
           "up_proj.weight": ("up", "mlp_in"), "ff_out.weight": ("down", "mlp_out")},
)

DREAM = Layout(
    globals={"model.embed_tokens.weight": ("embed", "embed"), "model.norm.weight": ("final_norm", "vector")},
    head="lm_head.weight",
    layer_prefix="model.layers.{i}.",
    layer={"input_layernorm.weight": ("attn_norm", "vector"), "self_attn.q_proj.weight": ("q", "q"),
           "self_attn.k_proj.weight": ("k", "kv"), "self_attn.v_proj.weight": ("v", "kv"),
           "self_attn.q_proj.bias": ("q_bias", "q_bias"), "self_attn.k_proj.bias": ("k_bias", "kv_bias"),
           "self_attn.v_proj.bias": ("v_bias", "kv_bias"), "self_attn.o_proj.weight": ("o", "o"),
           "post_attention_layernorm.weight": ("mlp_norm", "vector"), "mlp.gate_proj.weight": ("gate", "mlp_in"),
           "mlp.up_proj.weight": ("up", "mlp_in"), "mlp.down_proj.weight": ("down", "mlp_out")},
)

LAYOUTS = {"llada": LLADA, "dream": DREAM, "qwen2": DREAM}  # Qwen2 (causal): Dream's names, Dream is a Qwen2


def entries(family: str, c: ModelConfig) -> list[Entry]:
    """Every source tensor a `family` checkpoint with config `c` must contain, in reading order."""
    layout, kinds = LAYOUTS[family], _kinds(c)

    def entry(source, target, kind):
        shape, transform = kinds[kind]
        return Entry(source, shape, target, transform)

    out = [entry(name, (target,), kind) for name, (target, kind) in layout.globals.items()]
    if not c.tie_embeddings:
        out.append(entry(layout.head, ("lm_head",), "head"))
    for i in range(c.n_layers):
        prefix = layout.layer_prefix.format(i=i)
        out += [entry(prefix + name, ("layers", i, target), kind) for name, (target, kind) in layout.layer.items()]
    return out


# Buffers some exporters save that carry no weights (recomputed from the config).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
