"""The masked-diffusion transformer shared by LLaDA, Dream and jdlm's own small models.

Reproduces the forward pass of ML-GSAI/LLaDA `modeling_llada.py` (LLaMA block) and HKUNLP/Dream
`modeling_dream.py` (Qwen2 layout): pre-norm RMSNorm, rotary embeddings in the "rotate half" layout, SwiGLU MLP,
*bidirectional* attention with grouped-query heads. Facts and tensor names: shared/REFERENCE.md section 1.

Axis legend used in the einsums and shape comments:
  B batch, T query positions (the window fed this call), S key positions (T, or the cache length),
  D d_model, N query heads, K key/value heads, G = N // K query heads per kv head, H head dim,
  F MLP hidden, V vocabulary.

Parameters are a plain pytree with one buffer set per layer (not stacked along a layer axis): a rolled scan over
stacked weights doubles the cached decode step on GPU (REFERENCE.md section 4).
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jdlm import sharding
from jdlm.config import ModelConfig
from jdlm.errors import ShardingError
from jdlm.kernels import float_linear, int8_swiglu, quantized_linear, window_attention
from jdlm.quantize import mode_of, pair_gate_up, quantized_shapes, scale_name


@flax.struct.dataclass
class Params:
    """Model weights plus the static config that gives them meaning.

    `weights` layout (shapes for x @ W, i.e. PyTorch weights transposed):
      embed [V, D]; final_norm [D]; lm_head [D, V] (absent when tie_embeddings);
      layers: tuple of dicts, one per layer, with
        attn_norm [D], q [D, N, H], k [D, K, H], v [D, K, H], (q_bias [N, H], k_bias [K, H], v_bias [K, H]),
        o [N, H, D], mlp_norm [D], gate [D, F], up [D, F], down [F, D].
    Quantised weights (jdlm/quantize.py): q, k, v, o, gate, up, down in int8 or float8_e4m3fn, each with a float32
    `{name}_scale` over its output axes (q_scale [N, H], o_scale [D], gate_scale [F], ...).
    """

    config: ModelConfig = flax.struct.field(pytree_node=False)
    weights: dict

    @property
    def dtype(self):
        return self.weights["embed"].dtype


@flax.struct.dataclass
class KVCache:
    """Keys and values of every position after RoPE: per layer `k`, `v` of shape [B, S, K, H]."""

    k: tuple
    v: tuple

    @property
    def length(self) -> int:
        return self.k[0].shape[1]


@flax.struct.dataclass
class ForwardOutput:
    """What `forward` returns.

    logits: [B, T', V] in the model dtype, already shifted for Dream (index i holds the prediction for position i);
      T' = T, or `logits_slice`'s length.
    cache: the updated KVCache when one was passed in or `return_cache` was set, else None.
    hidden: [B, T, D] final hidden states before the final norm (unshifted), when `return_hidden`.
    attn_probs: tuple with one [B, T, S] float32 array per layer in `probs_layers` (softmax probabilities averaged
      over heads), else ().
    """

    logits: jax.Array
    cache: KVCache | None = None
    hidden: jax.Array | None = None
    attn_probs: tuple = ()


def init_params(config: ModelConfig, key: jax.Array, dtype=jnp.float32, std: float = 0.02) -> Params:
    """Random weights (normal, `std`; norms at 1): for tests, benchmarks and training from scratch."""
    D, N, K, H, F, V = (config.d_model, config.n_heads, config.n_kv_heads, config.head_dim, config.mlp_hidden,
                        config.vocab_size)
    keys = iter(jax.random.split(key, 3 + 10 * config.n_layers))

    def normal(*shape):
        return (std * jax.random.normal(next(keys), shape, jnp.float32)).astype(dtype)

    layers = []
    for _ in range(config.n_layers):
        layer = dict(attn_norm=jnp.ones((D,), dtype), q=normal(D, N, H), k=normal(D, K, H), v=normal(D, K, H),
                     o=normal(N, H, D), mlp_norm=jnp.ones((D,), dtype), gate=normal(D, F), up=normal(D, F),
                     down=normal(F, D))
        if config.qkv_bias:
            layer.update(q_bias=normal(N, H), k_bias=normal(K, H), v_bias=normal(K, H))
        layers.append(layer)
    weights = dict(embed=normal(V, D), final_norm=jnp.ones((D,), dtype), layers=tuple(layers))
    if not config.tie_embeddings:
        weights["lm_head"] = normal(D, V)
    return Params(config=config, weights=weights)


def param_shapes(config: ModelConfig, dtype=jnp.bfloat16, quantize: str | None = None) -> Params:
    """The parameter pytree as ShapeDtypeStructs (allocates nothing); `quantize` ("int8", "fp8"): with the linear
    weights quantised and their scales (jdlm/quantize.py)."""
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0), dtype))
    if quantize is None:
        return params
    return params.replace(weights=quantized_shapes(params.weights, quantize))


# ---------------------------------------------------------------- building blocks


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm as both references compute it: normalise in float32, cast back, then scale."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype) * weight


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, "rotate half" layout, computed in float32.

    Args:
      x: [B, T, heads, H].
      positions: [B, T] integer positions.
    """
    H = x.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, H, 2, dtype=np.float32) / H))  # [H/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    cos = jnp.cos(jnp.concatenate([angles, angles], -1))[:, :, None, :]  # [B, T, 1, H]
    sin = jnp.sin(jnp.concatenate([angles, angles], -1))[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : H // 2], x32[..., H // 2:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def linear(spec: str, x: jax.Array, layer: dict, name: str) -> jax.Array:
    """`einsum(spec, x, layer[name])`; for a weight quantised by jdlm/quantize.py (a sibling `{name}_scale` over
    its output axes), the weight is converted to x's dtype inside the matmul, which accumulates in float32, and the
    scale applied to the output channels, so the weight is read in 1 byte: on a GPU with few rows (a cached decode
    step) by jdlm/kernels' weight-only matmul (jdlm/kernels/quantized_linear.py), else by XLA, which fuses the
    convert into its GEMM.
    Float weights take the plain einsum, or with few rows on a Hopper GPU jdlm/kernels' matmul kernel
    (jdlm/kernels/float_linear.py)."""
    scale = layer.get(scale_name(name))
    if scale is None:
        y = float_linear.kernel_einsum(spec, x, layer[name])
        return jnp.einsum(spec, x, layer[name]) if y is None else y
    y = quantized_linear.kernel_einsum(spec, x, layer[name], scale)
    if y is not None:
        return y
    y = jnp.einsum(spec, x, layer[name].astype(x.dtype), preferred_element_type=jnp.float32)
    return (y * scale).astype(x.dtype)


def qkv_projections(h: jax.Array, layer: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
    """h [B, T, D] -> q [B, T, N, H], k, v [B, T, K, H] (before biases): one matmul for a fused layer
    (`fuse_projections`), else three `linear`s, or for quantised weights in the kernel's "fused" mode one kernel
    call for all three."""
    if "qkv" in layer:
        y = linear("BTD,DKSH->BTKSH", h, layer, "qkv")  # S = G + 2: a kv head's G query heads, its key, its value
        B, T, K, S, H = y.shape
        return y[:, :, :, : S - 2].reshape(B, T, K * (S - 2), H), y[:, :, :, S - 2], y[:, :, :, S - 1]
    names = ("q", "k", "v")
    fused = quantized_linear.kernel_projections(h, [layer[n] for n in names], [layer.get(scale_name(n)) for n in names])
    if fused is not None:
        return tuple(fused)
    return (linear("BTD,DNH->BTNH", h, layer, "q"), linear("BTD,DKH->BTKH", h, layer, "k"),
            linear("BTD,DKH->BTKH", h, layer, "v"))


def swiglu(h: jax.Array, layer: dict) -> jax.Array:
    """silu(h @ gate) * (h @ up): h [B, T, D] -> [B, T, F]; one matmul for a fused layer's `gate_up` [D, 2, F]
    (`fuse_projections`), or one kernel call with the SwiGLU included for a float gate_up with few rows on a Hopper
    GPU (jdlm/kernels/float_linear.py), and likewise for a fused int8 layer's `gate_up_pairs` [D, F]
    (jdlm/kernels/int8_swiglu.py); for separate quantised weights in the quantised kernel's "fused" mode one
    kernel call."""
    if "gate_up_pairs" in layer:  # a fused int8 layer
        pairs, scale = layer["gate_up_pairs"], layer[scale_name("gate_up_pairs")]
        fused = int8_swiglu.kernel_swiglu(h, pairs, scale)
        return int8_swiglu.xla_swiglu(h, pairs, scale) if fused is None else fused
    if "gate_up" in layer:
        fused = float_linear.kernel_swiglu(h, layer["gate_up"])
        if fused is not None:
            return fused
        y = linear("BTD,DIF->BTIF", h, layer, "gate_up")
        return jax.nn.silu(y[:, :, 0]) * y[:, :, 1]
    fused = quantized_linear.kernel_swiglu(h, layer["gate"], layer["up"], layer.get(scale_name("gate")),
                                           layer.get(scale_name("up")))
    if fused is not None:
        return fused
    return jax.nn.silu(linear("BTD,DF->BTF", h, layer, "gate")) * linear("BTD,DF->BTF", h, layer, "up")


# The weights of a layer that `fuse_projections` replaces (with their scales, when quantised).
SEPARATE_PROJECTIONS = ("q", "k", "v", "gate", "up")


def fuse_projections(params: Params, *, free_inputs: bool = False) -> Params:
    """`params` with each layer's q, k, v stored as one weight and its gate, up as another, so that a forward runs
    two matmuls where it ran five. At batch 1 a cached decode step's matmuls are short weight reads, and wider ones
    read closer to the memory bandwidth: on an H100 at LLaDA-8B shapes (batch 1, dual cache) the cached step goes
    from 6.57 to 6.29 ms (docs/performance.md). Fused layout:

      qkv     [D, K, G + 2, H]: for each kv head, its G = N / K query heads, then its key head and its value head;
      gate_up [D, 2, F]:        gate, then up;
      gate_up_pairs [D, F]:     for int8 weights instead of gate_up: int16 elements, each gate's byte and up's
                                (jdlm/kernels/int8_swiglu.py, whose kernel reads them 5% faster at batch 1).

    Quantised weights keep their per-channel scales in the same layout (qkv_scale [K, G + 2, H], gate_up_scale
    or gate_up_pairs_scale [2, F]); biases stay apart. `forward` computes the same numbers either way (the same
    dot products, grouped differently). The fused params are for running the model: `jdlm.save` refuses them (save
    the params as loaded), and so does a mesh (fuse on one device). Params already fused are returned as they are.

    The result holds new buffers. `free_inputs=True` deletes each layer's separate weights as soon as its fused ones
    exist (the input params are unusable afterwards; the CLI does this with the weights it just loaded): the peak
    is the model plus about a layer where the allocator reuses the freed blocks, more where they are fragmented.
    Otherwise the input's buffers live as long as the caller holds them, and at 8B shapes fusing needs room for a
    second copy of the layers."""
    if is_fused(params) or not params.weights["layers"]:
        return params
    if sharding.mesh_of(params) is not None:
        raise ShardingError("fuse_projections runs on params on one device; decode sharded params as they are "
                            "(their projections stay apart)")
    c = params.config
    K, G, H = c.n_kv_heads, c.n_heads // c.n_kv_heads, c.head_dim
    fused = []
    for layer in params.weights["layers"]:
        layer = dict(layer)
        replaced = []
        for name_of in (str, scale_name) if scale_name("q") in layer else (str,):  # the weights, then their scales
            q, k, v, gate, up = separate = [layer.pop(name_of(name)) for name in SEPARATE_PROJECTIONS]
            lead = q.shape[:-2]  # (D,) for a weight, () for a scale
            layer[name_of("qkv")] = jnp.concatenate([q.reshape(*lead, K, G, H), k[..., None, :], v[..., None, :]],
                                                    axis=-2)
            layer[name_of("gate_up")] = jnp.stack([gate, up], axis=-2)
            replaced += separate
        layer = pair_gate_up(layer)  # int8: gate and up as byte pairs
        if free_inputs:
            jax.block_until_ready([layer["qkv"], layer.get("gate_up", layer.get("gate_up_pairs"))])
            for array in replaced:
                array.delete()
        fused.append(layer)
    return params.replace(weights={**params.weights, "layers": tuple(fused)})


def is_fused(params: Params) -> bool:
    """Whether `params` hold fused projections (`fuse_projections`)."""
    layers = params.weights["layers"]
    return bool(layers) and "qkv" in layers[0]


def keep_in_loop(layer: dict, anchor: jax.Array) -> dict:
    """`layer` with its quantised weights passed through an optimization barrier together with `anchor` (this
    call's tokens, which change every decode step). Without it XLA hoists each weight's int8 -> compute-dtype
    convert out of the decode loop as loop-invariant: a second, full-width copy of the weights, read at 2 bytes a
    weight every step, which undoes the point of quantising. The barrier computes nothing."""
    names = [name for name in layer if scale_name(name) in layer]
    pinned, _ = jax.lax.optimization_barrier(([layer[name] for name in names], anchor))
    return {**layer, **dict(zip(names, pinned))}


def _attention_with_probs(q, k, v, mask):
    """Plain attention that also returns the head-averaged probabilities.

    q [B, T, N, H], k/v [B, S, K, H], mask [B, 1, T, S] or None -> (out [B, T, N, H], probs [B, T, S] float32).
    """
    B, T, N, H = q.shape
    K = k.shape[2]
    qg = q.reshape(B, T, K, N // K, H)
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32) / np.sqrt(H)
    if mask is not None:
        scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)  # [B, K, G, T, S]
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs.astype(v.dtype), v).reshape(B, T, N, H)
    return out, probs.mean(axis=(1, 2))


def _attention(q, k, v, mask, implementation, cached: bool = False):
    """Fused attention: q [B, T, N, H], k/v [B, S, K, H], mask [B, 1, T, S] bool or None -> [B, T, N, H].
    `cached`: a window of queries against a KV cache, which jdlm/kernels/window_attention.py's kernel may take
    (its `set_mode`; by default "auto": on one GPU, without grouped-query attention)."""
    if cached:
        out = window_attention.kernel_attention(q, k, v, mask)
        if out is not None:
            return out
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def default_attention_impl(dtype) -> str | None:
    """cuDNN's fused attention on GPU in half precision, XLA's everywhere else."""
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "xla"


# ---------------------------------------------------------------- forward


def forward(
    params: Params,
    tokens: jax.Array,
    *,
    positions: jax.Array | None = None,
    key_mask: jax.Array | None = None,
    attn_mask: jax.Array | None = None,
    cache: KVCache | None = None,
    window_start: jax.Array | int = 0,
    write_from: jax.Array | int | None = None,
    extra_embed: jax.Array | None = None,
    logits_slice: tuple[jax.Array | int, int] | None = None,
    return_cache: bool = False,
    return_hidden: bool = False,
    probs_layers: Sequence[int] = (),
    causal: bool = False,
    attention_impl: str | None = None,
) -> ForwardOutput:
    """Runs the transformer over `tokens`, optionally against a KV cache.

    Without a cache, every position attends to every real position of `tokens`. With a cache of length S, `tokens`
    is the window [window_start, window_start + T) of the cached sequence: its fresh keys/values replace the
    cached ones at window positions >= `write_from` (default: all of the window), and its queries attend over the
    whole cache (prefix, window, and whatever stale keys lie after it).

    A query at absolute position p may attend to key j iff `key_mask[b, j]` or j == p: padding is never seen by a
    real position, and a padding query attends to itself, so no row is all-masked (no NaN leaks into later layers).

    Args:
      params: model weights.
      tokens: [B, T] int token ids.
      positions: [B, T] rotary positions; default `window_start + arange(T)`.
      key_mask: [B, S] bool, True for real positions (S = T without a cache); None means all real.
      attn_mask: [B or 1, T, S] bool, which keys each query may attend to besides `key_mask` (both must allow
        it), or None; e.g. WINO's shadow block (jdlm/decoding/shadow.py). Keep each query's own position allowed.
      cache: KVCache over S positions, or None.
      window_start: where `tokens` starts in the cached sequence (traced scalar is fine).
      write_from: absolute position from which the window's fresh keys/values are kept (>= window_start); a
        scalar, or [B] for one position per row.
      extra_embed: [B, T, D] added to the input embeddings (ASRD-style guidance), or None.
      logits_slice: (start, length): compute logits only for window positions [start, start + length)
        (`start` may be traced, `length` is static). Saves the output projection over the rest.
      return_cache: build and return a full-length KVCache from this forward (only without `cache`).
      return_hidden: also return the final hidden states before the final norm.
      probs_layers: layer indices whose head-averaged attention probabilities are returned.
      causal: attend only to keys at or before each query's position (jdlm's small autoregressive models).
      attention_impl: "xla" or "cudnn"; default: `default_attention_impl(dtype)` (cuDNN on GPU in bf16).

    Returns:
      ForwardOutput (see its docstring).
    """
    cfg = params.config
    w = params.weights
    B, T = tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(window_start + jnp.arange(T, dtype=jnp.int32), (B, T))
    if attention_impl is None:
        attention_impl = default_attention_impl(params.dtype)
    probs_layers = tuple(sorted({int(i) % cfg.n_layers for i in probs_layers}))

    S = T if cache is None else cache.length
    query_abs = window_start + jnp.arange(T)  # absolute position of each query in the key axis
    if key_mask is None:
        mask = None
    else:
        own = query_abs[:, None] == jnp.arange(S)[None, :]  # [T, S]
        mask = (key_mask[:, None, :] | own[None])[:, None]  # [B, 1, T, S]
    if attn_mask is not None:
        mask = attn_mask[:, None] if mask is None else mask & attn_mask[:, None]
    if causal:
        before = (jnp.arange(S)[None, :] <= query_abs[:, None])[None, None]  # [1, 1, T, S]
        mask = before if mask is None else mask & before
    if cache is not None:
        write_from = jnp.asarray(window_start if write_from is None else write_from)
        keep_fresh = (query_abs >= write_from[..., None])[..., None, None]  # [T, 1, 1] or [B, T, 1, 1]
        keep_fresh = keep_fresh if keep_fresh.ndim == 4 else keep_fresh[None]

    # The residual stream runs in the dtype of the layer weights; the embedding table may be kept wider (training
    # keeps it in float32: a bf16 scatter-add in its backward pass is very slow on GPUs).
    x = jnp.take(w["embed"], tokens, axis=0).astype(w["final_norm"].dtype)  # [B, T, D]
    if mode_of(w) is not None:  # quantised: dequantise inside each step of a decode loop (jdlm/quantize.py)
        w = {**w, "layers": tuple(keep_in_loop(layer, tokens) for layer in w["layers"])}
    if extra_embed is not None:
        x = x + extra_embed.astype(x.dtype)
    new_k, new_v, probs_out = [], [], []
    for i, layer in enumerate(w["layers"]):
        h = rms_norm(x, layer["attn_norm"], cfg.norm_eps)
        q, k, v = qkv_projections(h, layer)
        if cfg.qkv_bias:
            q, k, v = q + layer["q_bias"], k + layer["k_bias"], v + layer["v_bias"]
        q = rotary(q, positions, cfg.rope_theta)
        k = rotary(k, positions, cfg.rope_theta)
        if cache is not None:
            # Window keys/values left of `write_from` keep their cached (possibly stale) values.
            old_k = jax.lax.dynamic_slice_in_dim(cache.k[i], window_start, T, axis=1)
            old_v = jax.lax.dynamic_slice_in_dim(cache.v[i], window_start, T, axis=1)
            k = jax.lax.dynamic_update_slice_in_dim(cache.k[i], jnp.where(keep_fresh, k, old_k), window_start, 1)
            v = jax.lax.dynamic_update_slice_in_dim(cache.v[i], jnp.where(keep_fresh, v, old_v), window_start, 1)
        new_k.append(k)
        new_v.append(v)
        if i in probs_layers:
            attn, probs = _attention_with_probs(q, k, v, mask)
            probs_out.append(probs)
        else:
            attn = _attention(q, k, v, mask, attention_impl, cached=cache is not None)
        x = x + linear("BTNH,NHD->BTD", attn, layer, "o")
        h = rms_norm(x, layer["mlp_norm"], cfg.norm_eps)
        x = x + linear("BTF,FD->BTD", swiglu(h, layer), layer, "down")

    hidden = x
    if cfg.logits_shift:  # Dream: the prediction for position i comes from the output at i - 1.
        x = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
    if logits_slice is not None:
        start, length = logits_slice
        x = jax.lax.dynamic_slice_in_dim(x, start, length, axis=1)
    logits = lm_head(params, x)

    new_cache = None
    if cache is not None or return_cache:
        new_cache = KVCache(k=tuple(new_k), v=tuple(new_v))
    return ForwardOutput(logits=logits, cache=new_cache, hidden=hidden if return_hidden else None,
                         attn_probs=tuple(probs_out))


def lm_head(params: Params, hidden: jax.Array) -> jax.Array:
    """Final norm and output projection: hidden [..., D] -> logits [..., V] (no shift)."""
    cfg = params.config
    w = params.weights
    head = w["embed"].T if cfg.tie_embeddings else w["lm_head"]
    return rms_norm(hidden, w["final_norm"], cfg.norm_eps) @ head
