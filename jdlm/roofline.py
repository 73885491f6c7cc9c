"""The floors a decode is measured against: the device's matmul rate and copy bandwidth, measured, and the least
time a strategy's forward passes could take at those rates.

A decode runs two kinds of forward pass (`DecodeResult.full_forwards`, counted in the loop):
  full   over the whole sequence L = P + G: every step without a cache, a cache's refresh (a block's first step);
  cached a window against the KV cache (the rest of a cached decode's steps).
Each has a roofline floor, the larger of its FLOPs at the matmul rate and its bytes at the copy bandwidth:

    full    FLOPs: 2 * rows * L * (matmul weights per token) + attention (4 * rows * L * L * N * H per layer)
                   + the LM head over the logits' positions;  bytes: the weights, plus the KV cache written
    cached  FLOPs: the same over the window's T tokens against L keys;  bytes: the weights, plus the whole KV cache
                   read and the window's keys/values written

The window taken is the least any cache computes: the block (and Dream's slot before it), so the floor stays a
lower bound for the prefix cache and FreeCache, whose windows are longer. Activations, the embedding gather, the
rule's work and a guide's forwards are left out. The floor of a decode is full_forwards * full floor + cached
steps * cached floor; at batch 1 a cached step's floor is the weight read, at large batch and long prompts the
full forwards' matmuls.

    floors = measure_floors(jnp.bfloat16)                    # Floors(matmul_tflops=..., copy_gbps=...)
    floor_s = decode_floor(params, strategy, batch=1, prompt_len=256, full=8, cached=248, floors=floors).total_s
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time

import jax
import jax.numpy as jnp

from jdlm.config import ModelConfig
from jdlm.model import Params
from jdlm.quantize import weight_bytes

# Large enough to reach a GPU's peak (8192^3 bf16: about 1.7 ms on an H100; 1 GiB copied: about 0.8 ms), small
# enough to run in seconds on a CPU in the quick sizes.
FULL_SIZES = {"matmul": 8192, "copy_bytes": 1 << 30, "inner": 10}
QUICK_SIZES = {"matmul": 256, "copy_bytes": 1 << 22, "inner": 4}


@dataclasses.dataclass(frozen=True)
class Floors:
    """The device's rates, measured: matmul_tflops, a square [n, n] @ [n, n] matmul in `dtype` (TFLOP/s);
    copy_gbps, an elementwise pass over a large array (bytes read + bytes written per second, GB/s = 1e9 B/s).
    Each is the median of `repeats` timed runs after a warm-up, each run `inner` operations in one compiled loop."""

    matmul_tflops: float
    copy_gbps: float
    dtype: str
    matmul_n: int
    copy_bytes: int
    repeats: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def measure_floors(dtype=jnp.bfloat16, *, quick: bool = False, repeats: int = 5) -> Floors:
    """Times the matmul rate and the copy bandwidth of the default device (seconds on a GPU; `quick`: small sizes,
    for CPU smoke runs)."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    dtype = jnp.dtype(dtype)
    n, inner = sizes["matmul"], sizes["inner"]
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), dtype)
    b = (jax.random.normal(key_b, (n, n), jnp.float32) / n ** 0.5).astype(dtype)  # keeps a @ b @ b ... near 1
    matmul_s = median_time(lambda: _chained_matmuls(a, b, inner), repeats) / inner
    elements = sizes["copy_bytes"] // dtype.itemsize
    x = jnp.ones((elements,), dtype)
    copy_s = median_time(lambda: _chained_negations(x, inner), repeats) / inner
    return Floors(matmul_tflops=2 * n ** 3 / matmul_s / 1e12, copy_gbps=2 * elements * dtype.itemsize / copy_s / 1e9,
                  dtype=str(dtype), matmul_n=n, copy_bytes=elements * dtype.itemsize, repeats=repeats)


@functools.partial(jax.jit, static_argnums=2)
def _chained_matmuls(a, b, inner: int):
    return jax.lax.fori_loop(0, inner, lambda _, x: x @ b, a)


@functools.partial(jax.jit, static_argnums=1)
def _chained_negations(x, inner: int):
    return jax.lax.fori_loop(0, inner, lambda _, y: -y, x)  # reads and writes the whole array each time


def median_time(call, repeats: int) -> float:
    """Median seconds of `repeats` runs of `call()` (waited for), after one run to compile and warm up."""
    jax.block_until_ready(call())  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------- the cost of one forward pass


@dataclasses.dataclass(frozen=True)
class ForwardCost:
    """FLOPs and bytes moved of one forward pass (the whole batch)."""

    flops: float
    bytes: float

    def floor_s(self, floors: Floors) -> float:
        """The roofline floor: the larger of the matmuls at the matmul rate and the bytes at the bandwidth."""
        return max(self.flops / (floors.matmul_tflops * 1e12), self.bytes / (floors.copy_gbps * 1e9))


def weight_bytes_read(params: Params) -> int:
    """Bytes of weights a forward reads: all of them but the embedding table, of which it gathers only the
    tokens' rows (unless the table is also the LM head)."""
    total = weight_bytes(params.weights)
    return total if params.config.tie_embeddings else total - weight_bytes(params.weights["embed"])


def forward_cost(params: Params, *, rows: int, queries: int, keys: int, logits: int, kv_read: int,
                 kv_written: int) -> ForwardCost:
    """One forward of `rows` sequences: `queries` tokens fed, attending to `keys` positions, logits for `logits`
    positions; `kv_read` / `kv_written` positions of the KV cache read / written per row."""
    cfg = params.config
    per_token = _matmul_weights_per_layer(cfg) * cfg.n_layers
    attention = 4 * queries * keys * cfg.n_heads * cfg.head_dim * cfg.n_layers
    head = 2 * logits * cfg.d_model * cfg.vocab_size
    flops = rows * (2 * queries * per_token + attention + head)
    kv_position = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(params.dtype).itemsize
    return ForwardCost(flops=float(flops),
                       bytes=float(weight_bytes_read(params) + rows * (kv_read + kv_written) * kv_position))


def _matmul_weights_per_layer(cfg: ModelConfig) -> int:
    """Multiply-adds per token per layer: q, k, v, o and the SwiGLU MLP."""
    return (cfg.d_model * cfg.head_dim * (cfg.n_heads + 2 * cfg.n_kv_heads) + cfg.n_heads * cfg.head_dim * cfg.d_model
            + 3 * cfg.d_model * cfg.mlp_hidden)


# ---------------------------------------------------------------- the floor of a decode


@dataclasses.dataclass(frozen=True)
class DecodeFloor:
    """A decode's floor: full_s and cached_s, the floor of one forward of each kind; total_s, theirs times the
    forwards the decode ran of each kind."""

    full_s: float
    cached_s: float
    full_forwards: int
    cached_forwards: int

    @property
    def total_s(self) -> float:
        return self.full_forwards * self.full_s + self.cached_forwards * self.cached_s


def logits_positions(strategy, prompt_len: int) -> int:
    """How many positions' logits each forward returns (`SequenceInputs.span`): the block for most rules, the
    generation for a commit part, the whole sequence for a rule that reads attention."""
    G, W = strategy.schedule.gen_length, strategy.schedule.block_length
    if strategy.rule.attention_layers:
        return prompt_len + G
    return G if strategy.commit else W


def decode_floor(params: Params, strategy, *, batch: int, prompt_len: int, full: int, cached: int,
                 floors: Floors) -> DecodeFloor:
    """The floor of a decode of `batch` prompts of `prompt_len` tokens that ran `full` full forwards and `cached`
    cached steps (`DecodeResult.full_forwards`, `forwards - full_forwards`)."""
    cfg = params.config
    G, W = strategy.schedule.gen_length, strategy.schedule.block_length
    L = prompt_len + G
    rows = 2 * batch if strategy.guidance else batch
    logits = logits_positions(strategy, prompt_len)
    writes_cache = strategy.cache.reuses_keys
    full_cost = forward_cost(params, rows=rows, queries=L, keys=L, logits=logits, kv_read=0,
                             kv_written=L if writes_cache else 0)
    window = W + int(cfg.logits_shift)
    cached_cost = forward_cost(params, rows=rows, queries=window, keys=L, logits=min(logits, W), kv_read=L,
                               kv_written=W)
    return DecodeFloor(full_s=full_cost.floor_s(floors), cached_s=cached_cost.floor_s(floors), full_forwards=full,
                       cached_forwards=cached)
