"""A minimal float32 PyTorch LLaDA / Dream transformer, loaded from Hugging Face tensor names (test reference only).

Written independently of jdlm from the published model descriptions (shared/REFERENCE.md §1) and the public
PyTorch code users compare against:
  - LLaDA: GSAI-ML/LLaDA-8B-* `modeling_llada.py` (OLMo-derived; copy in NVlabs/Fast-dLLM `llada/model/`),
  - Dream: Dream-org/Dream-v0-* `modeling_dream.py` (Qwen2-derived; copy in NVlabs/Fast-dLLM `dream/model/`).
Both are one architecture: pre-norm RMSNorm, rotate-half RoPE, grouped-query bidirectional attention, SwiGLU MLP.
The family only changes tensor names, config keys and Dream's q/k/v biases. Logits are raw: Dream's one-position
shift is done by the samplers (tests/reference/samplers.py), exactly where the references do it.

Legend: B batch, T sequence (query) length, S key length, H query heads, K key/value heads, D head dim, C d_model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FAMILIES = ("llada", "dream")


@dataclasses.dataclass(frozen=True)
class RefConfig:
    family: str
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    mlp_hidden: int
    vocab: int
    rope_theta: float
    eps: float
    mask_id: Optional[int]
    tied: bool
    qkv_bias: bool

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def config_from_hf(family: str, cfg: dict) -> RefConfig:
    """Read the published config.json keys of one family into a RefConfig (refusing variants we do not model)."""
    if family == "llada":
        # OLMo switches the LLaDA checkpoints leave at one value; anything else would need code we do not have.
        expected = {"layer_norm_type": "rms", "rope": True, "alibi": False, "include_bias": False,
                    "include_qkv_bias": False, "input_emb_norm": False, "scale_logits": False,
                    "block_group_size": 1, "block_type": "llama", "activation_type": "silu"}
        for key, want in expected.items():
            if key in cfg and cfg[key] != want:
                raise ValueError(f"LLaDA config {key}={cfg[key]!r} is not supported (expected {want!r})")
        n_heads = cfg["n_heads"]
        return RefConfig(
            family=family, d_model=cfg["d_model"], n_heads=n_heads, n_kv_heads=cfg.get("n_kv_heads") or n_heads,
            n_layers=cfg["n_layers"], mlp_hidden=cfg["mlp_hidden_size"],
            vocab=cfg.get("embedding_size") or cfg["vocab_size"], rope_theta=float(cfg["rope_theta"]),
            eps=float(cfg["rms_norm_eps"]), mask_id=cfg.get("mask_token_id"),
            tied=bool(cfg.get("weight_tying", False)), qkv_bias=False)
    if family == "dream":
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"Dream config hidden_act={cfg['hidden_act']!r} is not supported")
        n_heads = cfg["num_attention_heads"]
        return RefConfig(
            family=family, d_model=cfg["hidden_size"], n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads, n_layers=cfg["num_hidden_layers"],
            mlp_hidden=cfg["intermediate_size"], vocab=cfg["vocab_size"], rope_theta=float(cfg["rope_theta"]),
            eps=float(cfg["rms_norm_eps"]), mask_id=cfg.get("mask_token_id"),
            tied=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=True)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def tensor_names(c: RefConfig) -> dict[str, str]:
    """Our parameter name -> the checkpoint tensor name, for every tensor the model reads."""
    if c.family == "llada":
        t = "model.transformer"
        names = {"embed": f"{t}.wte.weight", "final_norm": f"{t}.ln_f.weight"}
        if not c.tied:
            names["head"] = f"{t}.ff_out.weight"
        for i in range(c.n_layers):
            b = f"{t}.blocks.{i}"
            names.update({
                f"{i}.attn_norm": f"{b}.attn_norm.weight", f"{i}.q": f"{b}.q_proj.weight",
                f"{i}.k": f"{b}.k_proj.weight", f"{i}.v": f"{b}.v_proj.weight", f"{i}.o": f"{b}.attn_out.weight",
                f"{i}.mlp_norm": f"{b}.ff_norm.weight", f"{i}.gate": f"{b}.ff_proj.weight",
                f"{i}.up": f"{b}.up_proj.weight", f"{i}.down": f"{b}.ff_out.weight"})
        return names
    names = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight"}
    if not c.tied:
        names["head"] = "lm_head.weight"
    for i in range(c.n_layers):
        b = f"model.layers.{i}"
        names.update({
            f"{i}.attn_norm": f"{b}.input_layernorm.weight", f"{i}.q": f"{b}.self_attn.q_proj.weight",
            f"{i}.k": f"{b}.self_attn.k_proj.weight", f"{i}.v": f"{b}.self_attn.v_proj.weight",
            f"{i}.q_bias": f"{b}.self_attn.q_proj.bias", f"{i}.k_bias": f"{b}.self_attn.k_proj.bias",
            f"{i}.v_bias": f"{b}.self_attn.v_proj.bias", f"{i}.o": f"{b}.self_attn.o_proj.weight",
            f"{i}.mlp_norm": f"{b}.post_attention_layernorm.weight", f"{i}.gate": f"{b}.mlp.gate_proj.weight",
            f"{i}.up": f"{b}.mlp.up_proj.weight", f"{i}.down": f"{b}.mlp.down_proj.weight"})
    return names


def expected_shapes(c: RefConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter name -> its shape, in PyTorch nn.Linear layout ([out, in])."""
    C, HD, KD, M = c.d_model, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim, c.mlp_hidden
    shapes = {"embed": (c.vocab, C), "final_norm": (C,), "head": (c.vocab, C)}
    for i in range(c.n_layers):
        shapes.update({f"{i}.attn_norm": (C,), f"{i}.q": (HD, C), f"{i}.k": (KD, C), f"{i}.v": (KD, C),
                       f"{i}.o": (C, HD), f"{i}.mlp_norm": (C,), f"{i}.gate": (M, C), f"{i}.up": (M, C),
                       f"{i}.down": (C, M), f"{i}.q_bias": (HD,), f"{i}.k_bias": (KD,), f"{i}.v_bias": (KD,)})
    return shapes


@contextlib.contextmanager
def one_thread():
    """Run tiny matmuls on one CPU thread: on a busy machine OpenMP's thread hand-off costs ~15 ms per 64x64
    matmul, 1000x the work itself. The previous thread count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    # Both references normalise in float32, cast back to the activation dtype, then scale by the weight.
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RefModel(nn.Module):
    """LLaDA or Dream, float32, bidirectional. Build it with `RefModel.from_state_dict`."""

    def __init__(self, config: RefConfig, params: dict[str, Tensor]):
        super().__init__()
        self.config = config
        # Plain (non-trainable) tensors keyed by our short names; "head" aliases "embed" when tied.
        self.params = {k: v.detach().to(torch.float32).contiguous() for k, v in params.items()}
        if config.tied:
            self.params["head"] = self.params["embed"]
        D = config.head_dim
        # inv_freq in float32 exactly as both references build it.
        self.inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))

    @classmethod
    def from_state_dict(cls, family: str, config: dict, state: dict[str, Tensor]) -> "RefModel":
        """Build from a config.json dict and an HF-named state dict; every tensor used once, every shape checked."""
        c = config_from_hf(family, config)
        names = tensor_names(c)
        shapes = expected_shapes(c)
        unused = set(state) - set(names.values())
        if unused:
            raise ValueError(f"checkpoint tensors not used by the {family} model: {sorted(unused)[:8]}")
        params = {}
        for ours, theirs in names.items():
            if theirs not in state:
                raise KeyError(f"checkpoint is missing tensor {theirs!r}")
            t = state[theirs]
            if tuple(t.shape) != shapes[ours]:
                raise ValueError(f"tensor {theirs!r} has shape {tuple(t.shape)}, expected {shapes[ours]}")
            params[ours] = t
        return cls(c, params)

    # --- building blocks -------------------------------------------------------------------------------------

    def _rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin: [B, 1, T, D] for positions [B, T] (float32, rotate-half layout)."""
        freqs = positions.float()[..., None] * self.inv_freq  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos()[:, None], emb.sin()[:, None]

    def _qkv(self, i: int, h: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rotated q [B,H,T,D], rotated k [B,K,T,D] and v [B,K,T,D] of layer i for hidden states h [B,T,C]."""
        c, p = self.config, self.params
        B, T, _ = h.shape
        n = rms_norm(h, p[f"{i}.attn_norm"], c.eps)
        q = F.linear(n, p[f"{i}.q"], p.get(f"{i}.q_bias"))
        k = F.linear(n, p[f"{i}.k"], p.get(f"{i}.k_bias"))
        v = F.linear(n, p[f"{i}.v"], p.get(f"{i}.v_bias"))
        q = q.view(B, T, c.n_heads, c.head_dim).transpose(1, 2)
        k = k.view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = v.view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        cos, sin = self._rope(positions)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k, v

    def _attend_and_mlp(self, i: int, h: Tensor, q: Tensor, k: Tensor, v: Tensor,
                        allowed: Optional[Tensor]) -> Tensor:
        """Finish layer i: attention of q over (k, v) (allowed: [B, T, S] bool or None = all), residual, MLP."""
        c, p = self.config, self.params
        B, T, _ = h.shape
        groups = c.n_heads // c.n_kv_heads  # query head j reads key/value head j // groups
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        mask = None if allowed is None else allowed[:, None]  # [B, 1, T, S]
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)  # scale 1/sqrt(D)
        h = h + F.linear(att.transpose(1, 2).reshape(B, T, c.d_model), p[f"{i}.o"])
        n = rms_norm(h, p[f"{i}.mlp_norm"], c.eps)
        return h + F.linear(F.silu(F.linear(n, p[f"{i}.gate"])) * F.linear(n, p[f"{i}.up"]), p[f"{i}.down"])

    def _head_mean_probs(self, q: Tensor, k: Tensor, allowed: Optional[Tensor]) -> Tensor:
        """Attention probabilities averaged over the heads: q [B, H, T, D], k [B, K, T, D] -> [B, T, T]."""
        k = k.repeat_interleave(self.config.n_heads // self.config.n_kv_heads, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if allowed is not None:
            scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        return torch.softmax(scores, dim=-1).mean(dim=1)

    def _head(self, h: Tensor) -> Tensor:
        p = self.params
        return F.linear(rms_norm(h, p["final_norm"], self.config.eps), p["head"])

    # --- public forwards -------------------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, x: Tensor, attention_mask: Optional[Tensor] = None,
                position_ids: Optional[Tensor] = None) -> Tensor:
        """Raw logits [B, T, V] (not shifted).

        Args:
          x: [B, T] token ids.
          attention_mask: optional [B, T] bool/int, True at real tokens. Query i may attend key j iff j is real, or
            j == i (so a pad query row attends to itself and stays finite; real rows never see pads).
          position_ids: optional [B, T] rotary positions; default the absolute positions 0..T-1.
        """
        with one_thread():
            return self._full(x, attention_mask, position_ids)[0]

    @torch.no_grad()
    def forward_masked(self, x: Tensor, allowed: Tensor, position_ids: Tensor) -> Tensor:
        """Raw logits [B, T, V] where query i may attend key j iff allowed[b, i, j] ([B, T, T] bool; keep each
        row non-empty), at the given rotary positions [B, T] (WINO's shadow block)."""
        with one_thread():
            h = F.embedding(x, self.params["embed"])
            for i in range(self.config.n_layers):
                q, k, v = self._qkv(i, h, position_ids)
                h = self._attend_and_mlp(i, h, q, k, v, allowed)
            return self._head(h)

    @torch.no_grad()
    def forward_full_with_cache(self, x: Tensor, attention_mask: Optional[Tensor] = None,
                                position_ids: Optional[Tensor] = None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Full forward that also returns, per layer, (k, v) of every position: k after RoPE, [B, K, T, D] each."""
        with one_thread():
            return self._full(x, attention_mask, position_ids)

    def _full(self, x, attention_mask, position_ids, maps=None, layers=()):
        B, T = x.shape
        if position_ids is None:
            position_ids = torch.arange(T).expand(B, T)
        allowed = None
        if attention_mask is not None:
            real = attention_mask.bool()
            allowed = real[:, None, :] | torch.eye(T, dtype=torch.bool)[None]  # [B, T(query), T(key)]
        h = F.embedding(x, self.params["embed"])
        kv = []
        for i in range(self.config.n_layers):
            q, k, v = self._qkv(i, h, position_ids)
            kv.append((k, v))
            if i in layers:
                maps.append(self._head_mean_probs(q, k, allowed))
            h = self._attend_and_mlp(i, h, q, k, v, allowed)
        return self._head(h), kv

    @torch.no_grad()
    def forward_with_attention(self, x: Tensor, layers, attention_mask: Optional[Tensor] = None,
                               position_ids: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """`forward`, plus the attention of `layers` (DAWN's `attn_avg`): softmax(q k^T / sqrt(D)) over the allowed
        keys, averaged over the heads of each layer, then over the layers: [B, T(query), T(key)] float32."""
        with one_thread():
            maps = []
            logits, _ = self._full(x, attention_mask, position_ids, maps=maps, layers=set(layers))
            return logits, torch.stack(maps).mean(0)

    @torch.no_grad()
    def forward_window(self, x_window: Tensor, kv: list[tuple[Tensor, Tensor]], *, mode: str, start: int) -> Tensor:
        """Cached forward of a window starting at absolute position `start` (Fast-dLLM semantics, no padding).

        mode "prefix": x_window = x[:, start:] (to the end); queries attend to the cached keys/values [0, start)
          and the window's own fresh keys/values.
        mode "dual": x_window = x[:, start:start+W]; the window's fresh keys/values replace the cached ones at
          [start, start+W) and queries attend over the whole cached sequence (prefix, fresh window, stale suffix).
        Rotary positions are absolute (start + offset). `kv` is not modified. Returns raw logits [B, W, V].
        """
        with one_thread():
            return self._window(x_window, kv, mode, start)

    def _window(self, x_window, kv, mode, start):
        if mode not in ("prefix", "dual"):
            raise ValueError(f"mode must be 'prefix' or 'dual', got {mode!r}")
        B, W = x_window.shape
        total = kv[0][0].shape[2]
        if mode == "prefix" and start + W != total:
            raise ValueError(f"prefix mode feeds x[start:]: expected {total - start} tokens, got {W}")
        if mode == "dual" and start + W > total:
            raise ValueError(f"dual window [{start}, {start + W}) runs past the cache length {total}")
        positions = (start + torch.arange(W)).expand(B, W)
        h = F.embedding(x_window, self.params["embed"])
        for i in range(self.config.n_layers):
            q, k_new, v_new = self._qkv(i, h, positions)
            k_cached, v_cached = kv[i]
            if mode == "prefix":
                k = torch.cat([k_cached[:, :, :start], k_new], dim=2)
                v = torch.cat([v_cached[:, :, :start], v_new], dim=2)
            else:
                k, v = k_cached.clone(), v_cached.clone()
                k[:, :, start:start + W] = k_new
                v[:, :, start:start + W] = v_new
            h = self._attend_and_mlp(i, h, q, k, v, None)
        return self._head(h)


def padded_position_ids(attention_mask: Tensor) -> Tensor:
    """HKUNLP Dream's rule for a left-padded batch: position = (number of real tokens so far) - 1, pads get 1."""
    m = attention_mask.long()
    pos = m.cumsum(-1) - 1
    return pos.masked_fill(m == 0, 1)


__all__ = ["RefModel", "RefConfig", "config_from_hf", "padded_position_ids", "one_thread", "FAMILIES"]

