"""Memory per device of one decode, estimated from the shapes: weights, KV cache, decode state, activations, logits.

The estimate follows jdlm's layout (`jdlm.sharding`): weights split over `model` as `PARAM_AXES` says (replicated
over `data`), the batch split over `data` (padded up to a multiple of it), kv heads over `model`. It is checked
against XLA's own account of the compiled decode (`compiled.memory_analysis()`) by scripts/memory_table.py, whose
table is in docs/scaling.md. `compiled_decode` compiles the decode from abstract inputs for that check.

    est = decode_memory(llada_8b(), batch=16, prompt_len=768, gen_length=256, block_length=32, cache="dual",
                        dtype="bfloat16", model=2)
    est.total / 2**30   # GiB per device
"""

from __future__ import annotations

import dataclasses
import math

from jdlm.config import ModelConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
F32 = 4  # softmax, logits and confidences are float32 whatever the weights


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one decode; `total` is their sum.

    weights: the shards of every weight this device holds. kv_cache: keys and values of every layer and position
    (caches only). state: the decode state (tokens [B, L], reveal step and confidence [B, G], per-row counters).
    activations: the peak inside one layer of a full-length forward (the residual stream and its norm, then the
    larger of attention (q, k, v, scores and probabilities, output) and the MLP (gate, up, their product)).
    logits: the block's logits [B, W, V / model] in float32 and their softmax, and the model-dtype logits.
    """

    weights: int
    kv_cache: int
    state: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.state + self.activations + self.logits

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self) | {"total": self.total}


def weight_bytes_per_device(config: ModelConfig, dtype: str, *, model: int = 1) -> int:
    """Bytes of the weight shards on one device: each weight split `model` ways along its `model` axis, if any."""
    from jdlm.sharding import PARAM_AXES, logical_spec, model_sizes

    sizes, size = model_sizes(config), DTYPE_BYTES[dtype]
    total = 0
    for name, count in _weight_counts(config).items():
        split = model if "model" in tuple(logical_spec(PARAM_AXES[name])) else 1
        elements = math.prod(sizes[a] for a in PARAM_AXES[name])
        total += count * elements * size // split
    return total


def decode_memory(config: ModelConfig, *, batch: int, prompt_len: int, gen_length: int, block_length: int,
                  cache: str = "none", dtype: str = "bfloat16", data: int = 1, model: int = 1,
                  flash_attention: bool = False) -> MemoryEstimate:
    """Estimated bytes per device of `jdlm.decode` for these shapes on a data x model mesh.

    Args:
      config: the model.
      batch: rows B (padded up to a multiple of `data`, as `jdlm.sharding.shard_rows` does).
      prompt_len, gen_length, block_length: P, G and W; the sequence is L = P + G.
      cache: "none", "prefix" or "dual" (a cache holds keys and values of all L positions).
      dtype: the weights' dtype (activations and the cache share it).
      data, model: the mesh.
      flash_attention: attention that never holds the [T, S] scores (cuDNN / splash); False counts them in
        float32 twice (scores and probabilities), as XLA's own attention does.
    """
    size = DTYPE_BYTES[dtype]
    B = -(-batch // data)  # rows per device
    L, W = prompt_len + gen_length, block_length
    D, F, V, H = config.d_model, config.mlp_hidden, config.vocab_size, config.head_dim
    N, K = config.n_heads // model, config.n_kv_heads // model  # heads on this device
    kv = 2 * config.n_layers * B * L * K * H * size if cache != "none" else 0
    state = B * L * 4 + B * gen_length * (4 + F32) + B * 16
    residual = 2 * B * L * D * size  # the stream and its norm
    scores = 0 if flash_attention else 2 * B * N * L * L * F32
    attention = B * L * (N + 2 * K) * H * size + scores + B * L * N * H * size + B * L * D * size
    mlp = 3 * B * L * F * size
    logits = B * W * (V // model) * (2 * F32 + size)
    return MemoryEstimate(weights=weight_bytes_per_device(config, dtype, model=model), kv_cache=kv, state=state,
                          activations=residual + max(attention, mlp), logits=logits)


def _abstract_inputs(config, dtype, batch: int, prompt_len: int, mesh):
    """(params, prompt, keys) as ShapeDtypeStructs with the shardings `jdlm.decode` would give them on `mesh`."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from jdlm import sharding
    from jdlm.decoding.loop import row_keys
    from jdlm.model import param_shapes

    params = param_shapes(config, dtype)
    keys = jax.eval_shape(lambda: row_keys(jax.random.key(0), batch))
    prompt = jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32)
    if mesh is None:
        return params, prompt, keys
    rows = NamedSharding(mesh, PartitionSpec(sharding.DATA))
    weights = jax.tree.map(lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where), params.weights,
                           sharding.param_shardings(config, mesh))
    return (params.replace(weights=weights), jax.ShapeDtypeStruct(prompt.shape, prompt.dtype, sharding=rows),
            jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=rows))


def compiled_decode(config, dtype, strategy, batch: int, prompt_len: int, mesh):
    """`jdlm.decode`'s loop compiled for these shapes on `mesh` (None: one device) from abstract inputs (no weight
    is allocated); `.memory_analysis()` is XLA's account of its memory per device. `batch` must be a multiple of
    the mesh's data axis (`decode` pads to one)."""
    import jax
    import jax.numpy as jnp

    from jdlm import sharding
    from jdlm.decoding.loop import _decode_loop

    params, prompt, keys = _abstract_inputs(config, dtype, batch, prompt_len, mesh)
    strategy = strategy.for_model(config)
    tables = jax.tree.map(jnp.asarray, strategy.schedule.tables())
    with sharding.active(mesh):
        return _decode_loop.lower(params, prompt, None, keys, strategy, tables).compile()


def _weight_counts(config: ModelConfig) -> dict[str, int]:
    """How many weights of each name `Params.weights` holds (layers counted once per layer)."""
    layer = ["attn_norm", "mlp_norm", "q", "k", "v", "o", "gate", "up", "down"]
    layer += ["q_bias", "k_bias", "v_bias"] if config.qkv_bias else []
    counts = {name: config.n_layers for name in layer}
    counts |= {"embed": 1, "final_norm": 1}
    if not config.tie_embeddings:
        counts["lm_head"] = 1
    return counts
