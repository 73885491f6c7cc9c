"""Tiny random LLaDA / Dream checkpoints in the published Hugging Face layout (config.json + safetensors).

The config keys and tensor names are those of GSAI-ML/LLaDA-8B-* and Dream-org/Dream-v0-*-7B (REFERENCE.md §1);
only the sizes are tiny: 2 layers, d_model 64, 4 heads (Dream: 2 KV heads), head dim 16, MLP hidden 128,
vocabulary 256 with mask id 250 and EOS/pad id 1, rope theta 10000. Weights are random float32, spread so that
predictions depend on context and softmax confidences vary (ties are rare).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from safetensors.torch import load_file, save_file

from tests.reference.torch_dlm import RefModel, config_from_hf, expected_shapes, tensor_names

MASK_ID = 250
EOS_ID = 1


def tiny_llada_config(**overrides) -> dict:
    """A config.json dict with LLaDA's published keys (OLMo style) and tiny sizes."""
    cfg = {
        "architectures": ["LLaDAModelLM"],
        "model_type": "llada",
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": 64,
        "embedding_dropout": 0.0,
        "embedding_size": 256,
        "eos_token_id": EOS_ID,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": MASK_ID,
        "max_sequence_length": 512,
        "mlp_hidden_size": 128,
        "mlp_ratio": 2,
        "multi_query_attention": None,
        "n_heads": 4,
        "n_kv_heads": 4,
        "n_layers": 2,
        "pad_token_id": EOS_ID,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 10000.0,
        "scale_logits": False,
        "torch_dtype": "float32",
        "use_cache": False,
        "vocab_size": 256,
        "weight_tying": False,
    }
    cfg.update(overrides)
    return cfg


def tiny_dream_config(**overrides) -> dict:
    """A config.json dict with Dream's published keys (Qwen2 style) and tiny sizes."""
    cfg = {
        "architectures": ["DreamModel"],
        "model_type": "Dream",
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "attention_dropout": 0.0,
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "hidden_act": "silu",
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "mask_token_id": MASK_ID,
        "max_position_embeddings": 512,
        "max_window_layers": 2,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": EOS_ID,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 256,
    }
    cfg.update(overrides)
    return cfg


def random_state_dict(family: str, config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors under the checkpoint's names.

    Matrices ~ N(0, 0.02²) except: embeddings N(0, 1) (so tokens differ clearly after the first norm), attention
    and MLP matrices N(0, 1/fan_in) (so every layer changes the residual stream and context matters), and the
    output head N(0, 0.5²) (logit spread ≈ 0.5·sqrt(d): confidences vary between ~0.05 and ~1). Norm weights
    are 1 + N(0, 0.1²) and Dream's q/k/v biases N(0, 0.02²), so a mixed-up name changes the output.
    """
    c = config_from_hf(family, config)
    shapes = expected_shapes(c)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for ours, theirs in tensor_names(c).items():
        shape = shapes[ours]
        if ours.endswith("norm"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif ours.endswith("_bias"):
            t = 0.02 * torch.randn(shape, generator=g)
        elif ours == "embed":
            t = torch.randn(shape, generator=g)
        elif ours == "head":
            t = 0.5 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / shape[1] ** 0.5
        state[theirs] = t.to(torch.float32).contiguous()
    if not c.tied and c.mask_id is not None:
        # Trained checkpoints never propose the mask token; a random head would now and then, and a committed
        # "mask" stays masked. A zero head row gives it logit 0, far below the best of ~255 logits of std ~4.
        state[tensor_names(c)["head"]][c.mask_id] = 0.0
    return state


def write_checkpoint(directory: Union[str, Path], config: dict, state: dict[str, torch.Tensor],
                     shards: int = 1) -> None:
    """Write config.json and model.safetensors, or `shards` files plus model.safetensors.index.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if shards == 1:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    names = list(state)
    weight_map, total = {}, 0
    for s in range(shards):
        part = names[s::shards]  # round-robin, so every shard holds tensors of several layers
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, str(directory / fname), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = fname
            total += state[n].numel() * state[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def tiny_llada_checkpoint(directory: Union[str, Path], seed: int = 0, shards: int = 1, **overrides) -> dict:
    """Write a tiny random LLaDA checkpoint into `directory`; returns its config dict."""
    config = tiny_llada_config(**overrides)
    write_checkpoint(directory, config, random_state_dict("llada", config, seed), shards)
    return config


def tiny_dream_checkpoint(directory: Union[str, Path], seed: int = 0, shards: int = 1, **overrides) -> dict:
    """Write a tiny random Dream checkpoint into `directory`; returns its config dict."""
    config = tiny_dream_config(**overrides)
    write_checkpoint(directory, config, random_state_dict("dream", config, seed), shards)
    return config


def family_of(config: dict) -> str:
    model_type = config.get("model_type")
    if model_type == "llada":
        return "llada"
    if model_type == "Dream":
        return "dream"
    raise ValueError(f"unknown model_type {model_type!r} (expected 'llada' or 'Dream')")


def load_state_dict(directory: Union[str, Path]) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, single-file or sharded."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for f in files:
            state.update(load_file(str(directory / f)))
        return state
    return load_file(str(directory / "model.safetensors"))


def load_ref_model(directory: Union[str, Path]) -> RefModel:
    """The RefModel of a checkpoint directory (family read from config.json's model_type)."""
    config = json.loads((Path(directory) / "config.json").read_text())
    return RefModel.from_state_dict(family_of(config), config, load_state_dict(directory))
