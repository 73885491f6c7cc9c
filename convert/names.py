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


def _same(a):
    return a


def _linear_to_heads(heads: int, head_dim: int):
    """PyTorch [heads*H, D] -> [D, heads, H] (x @ W layout, split per head)."""
    return lambda a: a.T.reshape(a.shape[1], heads, head_dim)


def _out_to_heads(heads: int, head_dim: int):
    """PyTorch [D, heads*H] -> [heads, H, D]."""
    return lambda a: a.T.reshape(heads, head_dim, a.shape[0])


def _transpose(a):
    return a.T


def _bias_to_heads(heads: int, head_dim: int):
    return lambda a: a.reshape(heads, head_dim)


def llada_entries(c: ModelConfig) -> list[Entry]:
    D, N, K, H, F, V = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.mlp_hidden, c.vocab_size
    t = "model.transformer"
    out = [Entry(f"{t}.wte.weight", (V, D), ("embed",), _same),
           Entry(f"{t}.ln_f.weight", (D,), ("final_norm",), _same)]
    if not c.tie_embeddings:
        out.append(Entry(f"{t}.ff_out.weight", (V, D), ("lm_head",), _transpose))
    for i in range(c.n_layers):
        b = f"{t}.blocks.{i}"
        out += [
            Entry(f"{b}.attn_norm.weight", (D,), ("layers", i, "attn_norm"), _same),
            Entry(f"{b}.q_proj.weight", (N * H, D), ("layers", i, "q"), _linear_to_heads(N, H)),
            Entry(f"{b}.k_proj.weight", (K * H, D), ("layers", i, "k"), _linear_to_heads(K, H)),
            Entry(f"{b}.v_proj.weight", (K * H, D), ("layers", i, "v"), _linear_to_heads(K, H)),
            Entry(f"{b}.attn_out.weight", (D, N * H), ("layers", i, "o"), _out_to_heads(N, H)),
            Entry(f"{b}.ff_norm.weight", (D,), ("layers", i, "mlp_norm"), _same),
            Entry(f"{b}.ff_proj.weight", (F, D), ("layers", i, "gate"), _transpose),
            Entry(f"{b}.up_proj.weight", (F, D), ("layers", i, "up"), _transpose),
            Entry(f"{b}.ff_out.weight", (D, F), ("layers", i, "down"), _transpose),
        ]
    return out


def dream_entries(c: ModelConfig) -> list[Entry]:
    D, N, K, H, F, V = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim, c.mlp_hidden, c.vocab_size
    out = [Entry("model.embed_tokens.weight", (V, D), ("embed",), _same),
           Entry("model.norm.weight", (D,), ("final_norm",), _same)]
    if not c.tie_embeddings:
        out.append(Entry("lm_head.weight", (V, D), ("lm_head",), _transpose))
    for i in range(c.n_layers):
        b = f"model.layers.{i}"
        a = f"{b}.self_attn"
        out += [
            Entry(f"{b}.input_layernorm.weight", (D,), ("layers", i, "attn_norm"), _same),
            Entry(f"{a}.q_proj.weight", (N * H, D), ("layers", i, "q"), _linear_to_heads(N, H)),
            Entry(f"{a}.k_proj.weight", (K * H, D), ("layers", i, "k"), _linear_to_heads(K, H)),
            Entry(f"{a}.v_proj.weight", (K * H, D), ("layers", i, "v"), _linear_to_heads(K, H)),
            Entry(f"{a}.q_proj.bias", (N * H,), ("layers", i, "q_bias"), _bias_to_heads(N, H)),
            Entry(f"{a}.k_proj.bias", (K * H,), ("layers", i, "k_bias"), _bias_to_heads(K, H)),
            Entry(f"{a}.v_proj.bias", (K * H,), ("layers", i, "v_bias"), _bias_to_heads(K, H)),
            Entry(f"{a}.o_proj.weight", (D, N * H), ("layers", i, "o"), _out_to_heads(N, H)),
            Entry(f"{b}.post_attention_layernorm.weight", (D,), ("layers", i, "mlp_norm"), _same),
            Entry(f"{b}.mlp.gate_proj.weight", (F, D), ("layers", i, "gate"), _transpose),
            Entry(f"{b}.mlp.up_proj.weight", (F, D), ("layers", i, "up"), _transpose),
            Entry(f"{b}.mlp.down_proj.weight", (D, F), ("layers", i, "down"), _transpose),
        ]
    return out


ENTRIES = {"llada": llada_entries, "dream": dream_entries}

# Buffers some exporters save that carry no weights (recomputed from the config).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
