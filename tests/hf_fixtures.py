"""Tiny Hugging Face checkpoints of both families, built with transformers' own Llama / Qwen2 layers.

LLaDA is a Llama with bidirectional attention and OLMo-style tensor names; Dream is a Qwen2 with bidirectional
attention and shifted logits. `bidirectional_logits` runs transformers' decoder layers with a full (non-causal)
additive mask, so it is an independent reference for jdlm's forward.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from jdlm.convert.safetensors_io import write_safetensors

VOCAB = 256
MASK_ID = 250
EOS_ID = 1
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def write_tokenizer(directory: Path, vocab_size: int = VOCAB) -> None:
    """A word-level tokenizer over `vocab_size` tokens: "<pad>", "<eos>", the words "w2".."wN", "<mask>"."""
    vocab = {f"w{i}": i for i in range(vocab_size)}
    vocab.update({"<unk>": 0, "<eos>": EOS_ID, "<mask>": MASK_ID})
    for i in (0, EOS_ID, MASK_ID):
        vocab.pop(f"w{i}")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<unk>", "<eos>", "<mask>"])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<eos>", "chat_template": CHAT_TEMPLATE}))


def build_torch_model(family: str, seed: int = 0, *, n_layers: int = 2, d_model: int = 64, n_heads: int = 4,
                      n_kv_heads: int | None = None, mlp_hidden: int = 128, tie: bool = False):
    """A random transformers LlamaForCausalLM (LLaDA) or Qwen2ForCausalLM (Dream), fp32, eager attention."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=d_model, intermediate_size=mlp_hidden, num_hidden_layers=n_layers,
                  num_attention_heads=n_heads, max_position_embeddings=512, tie_word_embeddings=tie,
                  attn_implementation="eager")
    if family == "llada":
        cfg = LlamaConfig(num_key_value_heads=n_kv_heads or n_heads, rms_norm_eps=1e-5, rope_theta=10000.0,
                          attention_bias=False, mlp_bias=False, **common)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(num_key_value_heads=n_kv_heads or 2, rms_norm_eps=1e-6, rope_theta=10000.0, **common)
        model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # spread the weights so logits and confidences are far from uniform
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.08 if p.ndim == 2 else 0.05)
    return model.float().eval()


def bidirectional_logits(model, tokens: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Raw logits [B, T, V] of a transformers model run without a causal mask.

    Padding: keys at invalid positions are masked (a position always sees itself) and rotary positions count
    from each row's first real token, the behaviour jdlm defines for batched decoding.
    """
    x = torch.as_tensor(tokens, dtype=torch.long)
    B, T = x.shape
    valid_t = torch.ones(B, T, dtype=torch.bool) if valid is None else torch.as_tensor(valid)
    allowed = valid_t[:, None, :] | torch.eye(T, dtype=torch.bool)[None]
    additive = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]  # [B, 1, T, T]
    positions = (torch.cumsum(valid_t.long(), -1) - 1).clamp(min=0)
    inner = model.model
    with torch.no_grad():
        h = inner.embed_tokens(x)
        rope = inner.rotary_emb(h, position_ids=positions)
        for layer in inner.layers:
            h = layer(h, attention_mask=additive, position_embeddings=rope, position_ids=positions)
            h = h[0] if isinstance(h, tuple) else h
        return model.lm_head(inner.norm(h)).numpy()


def _llada_name(name: str) -> str | None:
    table = {"model.embed_tokens.weight": "model.transformer.wte.weight", "model.norm.weight":
             "model.transformer.ln_f.weight", "lm_head.weight": "model.transformer.ff_out.weight"}
    if name in table:
        return table[name]
    parts = name.split(".")  # model.layers.{i}.<module...>.weight
    i, rest = parts[2], ".".join(parts[3:])
    sub = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "q_proj.weight",
           "self_attn.k_proj.weight": "k_proj.weight", "self_attn.v_proj.weight": "v_proj.weight",
           "self_attn.o_proj.weight": "attn_out.weight", "post_attention_layernorm.weight": "ff_norm.weight",
           "mlp.gate_proj.weight": "ff_proj.weight", "mlp.up_proj.weight": "up_proj.weight",
           "mlp.down_proj.weight": "ff_out.weight"}
    return f"model.transformer.blocks.{i}.{sub[rest]}"


def hf_config(family: str, model) -> dict:
    """The config.json of the published checkpoints, with the tiny model's numbers."""
    c = model.config
    if family == "llada":
        return {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": c.hidden_size,
                "n_heads": c.num_attention_heads, "n_kv_heads": c.num_key_value_heads,
                "n_layers": c.num_hidden_layers, "mlp_hidden_size": c.intermediate_size, "embedding_size": VOCAB,
                "vocab_size": VOCAB, "mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID,
                "rope_theta": c.rope_parameters["rope_theta"] if hasattr(c, "rope_parameters") else c.rope_theta,
                "rms_norm_eps": c.rms_norm_eps, "weight_tying": c.tie_word_embeddings, "include_bias": False,
                "include_qkv_bias": False, "block_type": "llama", "activation_type": "silu",
                "layer_norm_type": "rms", "rope": True, "alibi": False, "rope_full_precision": True,
                "input_emb_norm": False, "scale_logits": False, "block_group_size": 1,
                "max_sequence_length": 512}
    return {"model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": c.hidden_size,
            "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
            "num_hidden_layers": c.num_hidden_layers, "intermediate_size": c.intermediate_size,
            "vocab_size": VOCAB, "mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID,
            "rope_theta": c.rope_parameters["rope_theta"] if hasattr(c, "rope_parameters") else c.rope_theta,
            "rms_norm_eps": c.rms_norm_eps, "tie_word_embeddings": c.tie_word_embeddings,
            "max_position_embeddings": 512, "hidden_act": "silu"}


def write_hf_checkpoint(family: str, model, directory: Path, *, shards: int = 1, dtype=np.float32) -> Path:
    """Saves `model` in the published layout of `family`: config.json, safetensors (optionally sharded), tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, tensor in model.state_dict().items():
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue
        name = _llada_name(name) if family == "llada" else name
        state[name] = tensor.detach().numpy().astype(dtype)
    (directory / "config.json").write_text(json.dumps(hf_config(family, model), indent=1))
    write_tokenizer(directory)
    if shards == 1:
        write_safetensors(directory / "model.safetensors", state)
        return directory
    names = list(state)
    weight_map = {}
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s::shards]
        write_safetensors(directory / shard, {n: state[n] for n in part})
        weight_map.update({n: shard for n in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def rewrite_tensors(directory: Path, change) -> None:
    """Rewrites `directory/model.safetensors` with `change(tensors)` applied to its {name: array} dict in place:
    how tests make a checkpoint with mixed dtypes, NaN values or integer weights."""
    from jdlm.convert.safetensors_io import SafetensorsFile

    f = SafetensorsFile(directory / "model.safetensors")
    tensors = {name: f.get(name) for name in f.keys()}
    change(tensors)
    write_safetensors(directory / "model.safetensors", tensors)
