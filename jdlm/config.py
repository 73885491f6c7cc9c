"""Model configuration: one frozen dataclass for LLaDA, Dream and our own small models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any
from jdlm.errors import ConfigError

FAMILIES = ("llada", "dream")



@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and special tokens of a masked-diffusion transformer.

    One transformer covers both families: pre-norm RMSNorm, rotary embeddings ("rotate half"), SwiGLU MLP and
    bidirectional attention with grouped-query heads. The per-family differences are fields here:
    `qkv_bias` (Dream), `logits_shift` (Dream predicts position i from the output at i-1) and `tie_embeddings`.
    `causal` marks an autoregressive model (jdlm's `tiny-ar`): causal attention, decoded left to right with
    `decode_causal`; a config.json without the key is a masked-diffusion model.
    """

    family: str = "llada"
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_hidden: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = False
    logits_shift: bool = False
    causal: bool = False
    max_seq_len: int = 4096
    mask_id: int
    eos_id: int
    pad_id: int
    eot_id: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden",
                     "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        for name in ("mask_id", "eos_id", "pad_id") + (("eot_id",) if self.eot_id is not None else ()):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"{name}={getattr(self, name)} is outside the vocabulary [0, {self.vocab_size})")

    @property
    def end_ids(self) -> tuple[int, ...]:
        """Tokens that end an answer: EOS, and end-of-turn where the model has one."""
        return (self.eos_id,) if self.eot_id is None else (self.eos_id, self.eot_id)

    @property
    def n_params(self) -> int:
        """Number of parameters (embeddings and head included)."""
        attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        if self.qkv_bias:
            attn += self.head_dim * (self.n_heads + 2 * self.n_kv_heads)
        layer = attn + 3 * self.d_model * self.mlp_hidden + 2 * self.d_model
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        return self.n_layers * layer + self.vocab_size * self.d_model + head + self.d_model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"jdlm_config": self.to_dict()}, indent=2) + "\n")


# ---------------------------------------------------------------- presets


def llada_8b() -> ModelConfig:
    """GSAI-ML/LLaDA-8B-Base / -Instruct."""
    return ModelConfig(family="llada", vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                       head_dim=128, mlp_hidden=12288, rope_theta=500000.0, norm_eps=1e-5, max_seq_len=4096,
                       mask_id=126336, eos_id=126081, pad_id=126081, eot_id=126348)


def dream_7b() -> ModelConfig:
    """Dream-org/Dream-v0-Base-7B / -Instruct-7B."""
    return ModelConfig(family="dream", vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                       head_dim=128, mlp_hidden=18944, rope_theta=1e6, norm_eps=1e-6, qkv_bias=True,
                       logits_shift=True, max_seq_len=131072, mask_id=151666, eos_id=151643, pad_id=151643,
                       eot_id=151645)


def tiny(**overrides) -> ModelConfig:
    """A 2-layer test model (vocabulary 256); override any field, e.g. `tiny(family="dream", ...)`."""
    base = dict(family="llada", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
                mlp_hidden=128, rope_theta=10000.0, norm_eps=1e-5, max_seq_len=512, mask_id=250, eos_id=1,
                pad_id=1)
    base.update(overrides)
    return ModelConfig(**base)


# ---------------------------------------------------------------- Hugging Face config.json readers

# The modeling code of each family branches on these; jdlm implements the published values only (the first one).
_LLADA_FIXED = {
    "layer_norm_type": ("rms",), "rope": (True,), "alibi": (False, None), "block_type": ("llama",),
    "activation_type": ("silu",), "include_qkv_bias": (False, None), "input_emb_norm": (False, None),
    "scale_logits": (False, None), "block_group_size": (1, None), "multi_query_attention": (False, None),
    "attention_layer_norm": (False, None), "clip_qkv": (None,), "flash_attention": (False, True, None),
    "rope_full_precision": (True, None), "include_bias": (False, None),
}
_DREAM_FIXED = {
    "hidden_act": ("silu",), "use_sliding_window": (False, None), "rope_scaling": (None,),
    "attention_bias": (True, None),
}


def _require(hf: dict, key: str, source: str):
    if key not in hf:
        raise ConfigError(f"{source}: key {key!r} is missing; is this a complete Hugging Face config.json?")
    return hf[key]


def _refuse_unsupported(hf: dict, fixed: dict, family: str, source: str) -> None:
    """Names the first option whose value jdlm does not implement, instead of dropping it silently."""
    for key, allowed in fixed.items():
        if key in hf and hf[key] not in allowed:
            raise ConfigError(f"{source}: {key}={hf[key]!r} is not supported (jdlm implements {allowed[0]!r}, "
                              f"the value of the published {family} checkpoints)")


def from_hf_llada(hf: dict, source: str = "config.json") -> ModelConfig:
    """Reads a LLaDA (OLMo-style, model_type "llada") config.json."""
    _refuse_unsupported(hf, _LLADA_FIXED, "LLaDA", source)
    d = _require(hf, "d_model", source)
    n_heads = _require(hf, "n_heads", source)
    n_kv = hf.get("n_kv_heads") or n_heads
    mlp = _require(hf, "mlp_hidden_size", source)
    vocab = hf.get("embedding_size") or _require(hf, "vocab_size", source)
    eos = hf.get("eos_token_id", 126081)
    return ModelConfig(
        family="llada", vocab_size=vocab, d_model=d, n_layers=_require(hf, "n_layers", source), n_heads=n_heads,
        n_kv_heads=n_kv, head_dim=d // n_heads, mlp_hidden=mlp, rope_theta=float(hf.get("rope_theta", 10000.0)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)), qkv_bias=False,
        tie_embeddings=bool(hf.get("weight_tying", False)), logits_shift=False,
        max_seq_len=int(hf.get("max_sequence_length", 4096)), mask_id=int(hf.get("mask_token_id", 126336)),
        eos_id=int(eos), pad_id=int(hf.get("pad_token_id", eos) or eos), eot_id=hf.get("eot_token_id", 126348)
        if vocab > 126348 else None)


def from_hf_dream(hf: dict, source: str = "config.json") -> ModelConfig:
    """Reads a Dream (Qwen2-style, model_type "Dream") config.json."""
    _refuse_unsupported(hf, _DREAM_FIXED, "Dream", source)
    d = _require(hf, "hidden_size", source)
    n_heads = _require(hf, "num_attention_heads", source)
    mask_id = hf.get("mask_token_id")
    if mask_id is None:
        raise ConfigError(f"{source}: mask_token_id is missing or null; Dream's config.json carries it (151666 for "
                          "Dream-v0-7B): add it before converting")
    eos = hf.get("eos_token_id", 151643)
    vocab = _require(hf, "vocab_size", source)
    return ModelConfig(
        family="dream", vocab_size=vocab, d_model=d, n_layers=_require(hf, "num_hidden_layers", source),
        n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim") or d // n_heads, mlp_hidden=_require(hf, "intermediate_size", source),
        rope_theta=float(hf.get("rope_theta", 10000.0)), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", False)), logits_shift=True,
        max_seq_len=int(hf.get("max_position_embeddings", 32768)), mask_id=int(mask_id), eos_id=int(eos),
        pad_id=int(hf.get("pad_token_id") if hf.get("pad_token_id") is not None else eos),
        eot_id=151645 if vocab > 151645 else None)


def from_hf_qwen2(hf: dict, source: str = "config.json") -> ModelConfig:
    """Reads a Qwen2 / Qwen2.5 causal config.json (model_type "qwen2"): Dream's layout, causal, not shifted. Qwen has
    no mask token; its id is `mask_token_id` when the file has one, else Dream's 151666, so that the model can guide
    Dream (`ARGuide`): an unused embedding row it never generates."""
    _refuse_unsupported(hf, {"use_sliding_window": (False, None), **_DREAM_FIXED}, "Qwen2", source)
    vocab = _require(hf, "vocab_size", source)
    mask_id = hf.get("mask_token_id")
    if mask_id is None and vocab <= 151666:
        raise ConfigError(f"{source}: no mask_token_id and no row 151666 (Dream's mask id): add the diffusion "
                          "model's mask_token_id to config.json")
    return dataclasses.replace(from_hf_dream({**hf, "mask_token_id": 151666 if mask_id is None else mask_id}, source),
                               causal=True, logits_shift=False)


def from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Reads a Hugging Face config.json of either family, chosen by its `model_type`."""
    model_type = str(hf.get("model_type", "")).lower()
    readers = {"llada": from_hf_llada, "dream": from_hf_dream, "qwen2": from_hf_qwen2}
    if model_type in readers:
        try:
            return readers[model_type](hf, source)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:  # e.g. "d_model": "4096" or null
            raise ConfigError(f"{source}: a value has the wrong type ({e}); compare it with the published "
                              "config.json of the model") from None
    raise ConfigError(f"{source}: model_type {hf.get('model_type')!r} is not supported; jdlm converts 'llada' "
                      "(LLaDA-8B, LLaDA-1.5), 'Dream' (Dream-v0-7B) and 'qwen2' (Qwen2.5, causal guides) checkpoints")


def read_config_json(path: str | Path) -> dict:
    """The raw dict of a config.json (or of `path/config.json` for a directory), with clear errors."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise ConfigError(f"{path} does not exist; give a jdlm checkpoint directory (or a Hugging Face one)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise ConfigError(f"{path} is not valid JSON ({type(e).__name__}: {e}); restore the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a JSON {type(data).__name__}, not an object; restore the file")
    return data


def load_config(path: str | Path) -> ModelConfig:
    """Reads a config.json: jdlm's own (key "jdlm_config") or a Hugging Face one."""
    path = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
    data = read_config_json(path)
    if "jdlm_config" in data:
        try:
            return ModelConfig.from_dict(data["jdlm_config"])
        except ConfigError:
            raise
        except (TypeError, ValueError, AttributeError) as e:  # not an object, or a field of the wrong type
            raise ConfigError(f"{path}: jdlm_config is invalid ({e})") from None
    return from_hf(data, str(path))
