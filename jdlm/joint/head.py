"""The joint sampler head (ADJUST, REFERENCE.md §3.5): one transformer layer on top of a frozen base model that
updates the base's predictions after tokens are revealed, without another full forward pass.

At unroll k, for the W positions of a block (B batch, D d_model, V vocabulary):

    z   = fuse(concat(rms(embed(tokens)), rms(h_{k-1})))        [B, W, 2D] -> [B, W, D]
    z   = layer(z)                                               one base-architecture layer, full attention
    h_k = rms_out(z) + h_{k-1}                                   h_0: the base's final hidden states
    log p_k = log_softmax(base.lm_head(h_k))                     the frozen base's final norm and projection

`tokens` hold the block as it is now (mask id where still masked), so the tokens revealed since the full forward
reach the head through their embeddings (the base's own embedding table). `rms_out` starts at zero, so a new head
predicts exactly the base's marginals (ADJUST's "marginal" baseline) and learns the correction.

Unlike ADJUST, whose head attends over the whole sequence, this head attends within the current block: every cache
computes the block's hidden states at every step, so the head works with any cache, and the prompt's and earlier
blocks' information is already in h_0. With one block of the whole generation it sees the whole generation.
"""

from __future__ import annotations

import json
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jdlm.config import ModelConfig
from jdlm.errors import CheckpointError
from jdlm.files import write_atomically
from jdlm.model import Params, lm_head, rms_norm, rotary
from jdlm.quantize import INPUT_AXES

HEAD_FILE = "head.json"


@flax.struct.dataclass
class SamplerHead:
    """The head's weights and the base config they belong to (static).

    weights: embed_norm [D], hidden_norm [D], fuse [2D, D], out_norm [D] (zeros at init), and `layer`: attn_norm [D],
    q [D, N, H], k [D, K, H], v [D, K, H], o [N, H, D], mlp_norm [D], gate [D, F], up [D, F], down [F, D] (the base
    model's layer layout and sizes, without biases).
    """

    config: ModelConfig = flax.struct.field(pytree_node=False)
    weights: dict


def init_head(config: ModelConfig, key: jax.Array, dtype=jnp.float32, std: float = 0.02) -> SamplerHead:
    """A new head for a base model of `config`: normal(0, std) matrices, unit norms, zero output norm."""
    D, N, K, H, F = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim, config.mlp_hidden
    shapes = {"fuse": (2 * D, D), "q": (D, N, H), "k": (D, K, H), "v": (D, K, H), "o": (N, H, D),
              "gate": (D, F), "up": (D, F), "down": (F, D)}
    keys = dict(zip(shapes, jax.random.split(key, len(shapes))))
    normal = {name: (std * jax.random.normal(keys[name], shape)).astype(dtype) for name, shape in shapes.items()}
    layer = {name: normal[name] for name in ("q", "k", "v", "o", "gate", "up", "down")}
    layer.update(attn_norm=jnp.ones((D,), dtype), mlp_norm=jnp.ones((D,), dtype))
    return SamplerHead(config=config, weights={
        "embed_norm": jnp.ones((D,), dtype), "hidden_norm": jnp.ones((D,), dtype), "fuse": normal["fuse"],
        "out_norm": jnp.zeros((D,), dtype), "layer": layer})


def head_hidden(head: SamplerHead, base: Params, hidden: jax.Array, tokens: jax.Array,
                positions: jax.Array) -> jax.Array:
    """One unroll: h_k [B, W, D] from h_{k-1} `hidden` [B, W, D], the block's current `tokens` [B, W] int32 and
    their rotary `positions` [B, W]. Computes in the dtype of `hidden`."""
    cfg, w = head.config, head.weights
    dtype = hidden.dtype
    embed = jnp.take(base.weights["embed"], tokens, axis=0).astype(dtype)  # [B, W, D]
    x = jnp.concatenate([rms_norm(embed, w["embed_norm"], cfg.norm_eps),
                         rms_norm(hidden, w["hidden_norm"], cfg.norm_eps)], axis=-1) @ w["fuse"].astype(dtype)
    layer = jax.tree.map(lambda a: a.astype(dtype), w["layer"])
    h = rms_norm(x, layer["attn_norm"], cfg.norm_eps)
    q = rotary(jnp.einsum("BTD,DNH->BTNH", h, layer["q"]), positions, cfg.rope_theta)
    k = rotary(jnp.einsum("BTD,DKH->BTKH", h, layer["k"]), positions, cfg.rope_theta)
    v = jnp.einsum("BTD,DKH->BTKH", h, layer["v"])
    attn = jax.nn.dot_product_attention(q, k, v, implementation="xla")  # [B, W, N, H], full attention in the block
    x = x + jnp.einsum("BTNH,NHD->BTD", attn, layer["o"])
    h = rms_norm(x, layer["mlp_norm"], cfg.norm_eps)
    x = x + jnp.einsum("BTF,FD->BTD", jax.nn.silu(h @ layer["gate"]) * (h @ layer["up"]), layer["down"])
    return rms_norm(x, w["out_norm"].astype(dtype), cfg.norm_eps) + hidden


def head_logits(head: SamplerHead, base: Params, hidden: jax.Array, tokens: jax.Array,
                positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One unroll and its predictions: (h_k [B, W, D], logits [B, W, V] float32 from the base's own head)."""
    hidden = head_hidden(head, base, hidden, tokens, positions)
    return hidden, lm_head(base, hidden.astype(base.dtype)).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------- files


def base_fingerprint(base: Params, rounding=jnp.bfloat16) -> str:
    """A short hash of some of the base model's weights, rounded to bfloat16 (so that a bfloat16 and a float32 load
    of one checkpoint agree, whatever dtype it is stored in): a head is trained for one set of weights, and another
    model of the same shape would load it without complaint. `rounding=jnp.float32`: the hash heads saved before
    the rounding carry (the same for a checkpoint stored in bfloat16)."""
    import hashlib

    w = base.weights
    sample = [np.asarray(jnp.asarray(a, rounding), np.float32) for a in (w["final_norm"], w["embed"][:16])]
    return hashlib.sha256(b"".join(a.tobytes() for a in sample)).hexdigest()[:16]


# The head's matrices and how many leading input axes each has: `fuse`, and the layer's as in the base model's
# layers (jdlm.quantize.INPUT_AXES). The rest, the norms, are vectors and stay float32.
MATRIX_INPUT_AXES = {"fuse": 1, **INPUT_AXES}
PACKAGED_HEAD = "sampler_head"  # a packaged model's head: jdlm/models/<name>/sampler_head
STORAGES = ("float32", "int8")  # how `save_head` stores the matrices (head.json's "storage"; float32 when absent)


def _matrices(weights: dict):
    """(container, name) of each matrix: `fuse` at the top, the rest in `layer`."""
    return [(weights if name == "fuse" else weights["layer"], name) for name in MATRIX_INPUT_AXES]


def int8_weights(weights: dict) -> dict:
    """The head's weights with every matrix stored as int8 with float32 scales per output channel
    (`{name}_scale`; jdlm.quantize's symmetric round-to-nearest), the norms as they are: a quarter of the bytes."""
    from jdlm.quantize import quantize_array, scale_name

    out = {**weights, "layer": dict(weights["layer"])}
    for container, name in _matrices(out):
        container[name], container[scale_name(name)] = quantize_array(container[name], "int8",
                                                                      MATRIX_INPUT_AXES[name])
    return out


def float_weights(weights: dict, dtype=jnp.float32) -> dict:
    """Inverse of `int8_weights` (up to its rounding): the matrices in `dtype`, the scales dropped."""
    from jdlm.quantize import dequantize_array, scale_name

    out = {**weights, "layer": dict(weights["layer"])}
    for container, name in _matrices(out):
        container[name] = dequantize_array(container[name], container.pop(scale_name(name)), dtype)
    return out


def save_head(directory: str | Path, head: SamplerHead, extra: dict | None = None, base: Params | None = None,
              storage: str = "float32") -> Path:
    """Writes the head to `directory`: its weights (orbax) and head.json (the base config, the base weights'
    fingerprint when `base` is given, the storage and `extra`). storage: "float32", or "int8" (matrices as int8
    with per-channel scales, see `int8_weights`: how the packaged head ships)."""
    import orbax.checkpoint as ocp

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    weights = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), head.weights)
    weights = int8_weights(weights) if storage == "int8" else weights
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "weights", weights, force=True)
    info = {"base_config": head.config.to_dict(), "storage": storage, **(extra or {})}
    if base is not None:
        info["base_fingerprint"] = base_fingerprint(base)
    text = json.dumps(info, indent=1) + "\n"
    write_atomically(directory / HEAD_FILE, lambda tmp: tmp.write_text(text))  # last: a head is whole once it is there
    return directory


def head_dir(directory: str | Path) -> Path:
    """A head's directory from its path, or from a packaged model's name ("tiny": the head shipped with it)."""
    from jdlm.checkpoint import PACKAGED_MODELS, packaged_model_dir

    if str(directory) in PACKAGED_MODELS:
        return packaged_model_dir(str(directory)) / PACKAGED_HEAD
    return Path(directory).expanduser().resolve()


def load_head(directory: str | Path, base: ModelConfig | Params | None = None) -> SamplerHead:
    """Reads a head written by `save_head` (a directory, or a packaged model's name for the head shipped with it:
    `load_head("tiny")`), its weights in float32; with `base` (a config, or the model itself), checks that the head
    was trained for that architecture (and, given the model and a saved fingerprint, for those weights).

    Raises:
      CheckpointError: no head there, a head.json this jdlm cannot read, or a head trained for another model.
    """
    import orbax.checkpoint as ocp

    directory = head_dir(directory)
    if not (directory / HEAD_FILE).is_file():
        raise CheckpointError(f"no sampler head at {directory} (expected {HEAD_FILE} and weights/; write one with "
                              "`jdlm train-sampler`)")
    try:
        info = json.loads((directory / HEAD_FILE).read_text())
        config = ModelConfig.from_dict(info["base_config"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{directory / HEAD_FILE} is corrupt ({type(e).__name__}: {e}); export the head "
                              "again (`jdlm train-sampler`)") from None
    if info.get("storage", "float32") not in STORAGES:
        raise CheckpointError(f"the sampler head at {directory} is stored as {info['storage']!r}, which this jdlm "
                              f"does not read ({', '.join(STORAGES)}); upgrade jdlm")
    if isinstance(base, Params) and info.get("base_fingerprint") not in (
            None, base_fingerprint(base), base_fingerprint(base, jnp.float32)):
        raise CheckpointError(f"the sampler head at {directory} was trained for another model's weights (same "
                              "architecture, other weights, e.g. before a retraining): train it again")
    base = base.config if isinstance(base, Params) else base
    if base is not None and config != base:
        raise CheckpointError(f"the sampler head at {directory} was trained for another model "
                              f"(d_model {config.d_model}, {config.n_layers} layers, vocab {config.vocab_size})")
    int8 = info.get("storage") == "int8"

    def stored_weights():  # the stored layout: float32 matrices, or int8 ones with their scales
        weights = init_head(config, jax.random.key(0)).weights
        return int8_weights(weights) if int8 else weights

    abstract = jax.eval_shape(stored_weights)
    # On this machine's first device, whatever the saving machine was (a head trained on a GPU loads on a CPU).
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            weights = checkpointer.restore(directory / "weights", abstract)
    except (ValueError, FileNotFoundError, OSError) as e:  # missing or damaged files, or weights of other shapes
        reason = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(f"the sampler head's weights at {directory / 'weights'} cannot be read "
                              f"({type(e).__name__}: {reason}); train or pack the head again") from None
    weights = float_weights(weights) if int8 else weights
    # Uncommitted (as jnp.asarray leaves them): a decode on a mesh moves them to its devices, where arrays committed
    # to the first device would be refused ("incompatible devices": jdlm generate --joint K --mesh data=2).
    return SamplerHead(config=config, weights=jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), weights))
