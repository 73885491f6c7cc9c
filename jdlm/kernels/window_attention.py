"""Attention of a short window of queries against a long KV cache, split over the keys (flash-decoding): a Pallas
kernel (Triton on GPU) and when jdlm/model.py's cached forward uses it (`set_mode`).

A cached decode step attends T queries (the block, 32 at LLaDA-8B shapes) to the whole cache (S keys, 512 and up)
in every layer. That is little work per head: cuDNN's flash kernel, which spreads the queries over thread blocks,
leaves most of an H100's 132 SMs idle (about 33 us a layer where the cache read takes 2 us; docs/performance.md,
"Where a cached step's time goes"). Here the keys are spread instead: the grid runs over (batch row, kv head, key
chunk of `chunk` keys), and each program attends all G * T query rows of its kv head (the G query heads that share
it: grouped-query attention) to its chunk, walking it `block_k` keys at a time with an online softmax, and writes
float32 partials: the chunk's running max m, sum l = sum exp(s - m) and unnormalised output o = sum exp(s - m) v.
A small jnp step then combines the chunks:

    M = max_c m_c,   out = sum_c exp(m_c - M) o_c / sum_c exp(m_c - M) l_c

Where the (batch row, kv head) pairs alone give enough programs (B = 8 at LLaDA-8B's 32 kv heads), each program
takes the whole cache as one chunk and writes its normalised output o / l itself: no partials and no combine.

Masked scores are set to the large finite negative XLA's attention uses (-0.7 * float32 max), not -inf, so a chunk
with no allowed key gives finite partials that the combine weighs by exp(m_c - M) = 0, and a row with no allowed
key at all gets the mean of the values, as jax.nn.dot_product_attention gives: no NaN either way.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jdlm.kernels.switch import KernelSwitch
from jdlm.kernels.weight_only_matmul import power_of_two_rows, triton_params

CHUNKS = (256, 128, 64, 32, 16)  # key chunk sizes tried, largest first (Triton tiles are powers of two, dots >= 16)
MIN_PROGRAMS = 128  # about one program per SM of an H100 or H200 (132)
MIN_CHUNK = 64  # smaller chunks only where nothing larger divides S: their partials outweigh their keys
BLOCK_KS = (64, 32, 16)  # keys per step inside a program (a [block_k, H] tile of k and of v): the largest dividing
MAX_ROWS = 64  # query rows per head (T, rounded up to a power of two >= 16); longer windows are not decode steps
HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)  # jax.nn.dot_product_attention's masked score
MODES = ("auto", "on", "off")
# "auto" by default: on one H100 it gains 1-3% of a batch-1 dual-cache decode at LLaDA-8B shapes and costs nothing at
# batch 8, but loses 5-7% at Dream-7B's (4 kv heads for 28 query heads: too few programs, each with 7 heads' rows),
# so "auto" takes it only where every query head has its own kv head (docs/performance.md, "A window attention kernel")
SWITCH = KernelSwitch("window_attention", "attention kernel", MODES, default="auto")


def current_mode() -> str:
    """The mode `set_mode` last set."""
    return SWITCH.mode


def set_mode(mode: str) -> str:
    """Whether the model's cached forward (a window of queries against a KV cache) runs this kernel. Returns the
    previous mode.

    "auto" (the default): on an Ampere or newer GPU outside a multi-device mesh, for models without grouped-query
      attention (as many kv heads as query heads: LLaDA), cuDNN / XLA elsewhere;
    "on": everywhere the shapes allow (Pallas's interpreter off GPU: for tests);
    "off": never (cuDNN's attention on a GPU).
    Read when a function is traced (`jdlm.kernels.switch.KernelSwitch`)."""
    return SWITCH.set(mode)


def use_kernel(mode: str):
    """`set_mode(mode)` for the duration of a with-block."""
    return SWITCH.use(mode)


def _enabled(query_heads: int, kv_heads: int) -> bool:
    if SWITCH.mode == "auto":
        return query_heads == kv_heads and SWITCH.auto_applies()
    return SWITCH.mode == "on"


def kernel_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array | None:
    """`jax.nn.dot_product_attention(q, k, v, mask=mask)` by the kernel when the mode allows it (`set_mode`) and
    the shapes fit (`supported`), else None (the caller runs its own attention). Shapes as `window_attention`'s."""
    if not _enabled(q.shape[2], k.shape[2]) or not supported(q, k, v, mask):
        return None
    return window_attention(q, k, v, mask)


def supported(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> bool:
    """Whether the kernel takes these operands: at most MAX_ROWS queries, a head dim in HEAD_DIMS, S a multiple of
    16 (so some chunk divides it), whole kv-head groups, one float dtype in DTYPES, a mask [B or 1, 1, T, S]."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    return (k.shape == v.shape == (B, S, K, H) and N % K == 0 and power_of_two_rows(T) <= MAX_ROWS
            and H in HEAD_DIMS
            and default_chunk(B, K, S) is not None and q.dtype == k.dtype == v.dtype
            and any(q.dtype == d for d in DTYPES)
            and (mask is None or (mask.ndim == 4 and mask.shape[0] in (1, B) and mask.shape[1:] == (1, T, S))))


def default_chunk(batch: int, kv_heads: int, keys: int) -> int | None:
    """The key chunk each program takes: all of `keys` (one chunk, no combine) where batch * kv_heads programs are
    at least MIN_PROGRAMS; else, among the chunks in CHUNKS that divide `keys` and are at least MIN_CHUNK (all that
    divide it, where none that large does), the largest that still gives the grid (batch * kv_heads * keys / chunk
    programs) MIN_PROGRAMS programs, else the smallest. Smaller chunks than needed only add float32
    partials to write and combine: a [T, G, H] block a chunk, written and read back, 2 G T / chunk times the bytes
    of the chunk's bf16 keys and values. None when no chunk divides `keys`.

    LLaDA-8B (32 kv heads), S = 512: at B = 1, 128 (4 chunks, 128 programs: 256-key chunks would leave half the
    SMs idle, 64-key chunks double the partials for programs the GPU runs in a second wave); at B = 8, 512 (256
    programs)."""
    dividing = [c for c in CHUNKS if keys % c == 0]
    if dividing and batch * kv_heads >= MIN_PROGRAMS:
        return keys
    candidates = [c for c in dividing if c >= MIN_CHUNK] or dividing
    if not candidates:
        return None
    enough = [c for c in candidates if batch * kv_heads * (keys // c) >= MIN_PROGRAMS]
    return enough[0] if enough else candidates[-1]


def window_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *,
                     chunk: int | None = None, block_k: int | None = None, num_warps: int = 4,
                     num_stages: int = 2, interpret: bool | None = None) -> jax.Array:
    """Softmax(q k^T / sqrt(H), masked) v with the keys split into chunks over the grid (module docstring).

    Args:
      q: [B, T, N, H] queries; k, v: [B, S, K, H] keys and values (N = K * G: query head n uses kv head n // G).
      mask: [B or 1, 1, T, S] bool, True where a query may attend to a key; None: every key.
      chunk: keys per program (S: one chunk, normalised in the kernel); default `default_chunk(B, K, S)`.
      block_k: keys per step within a program (divides chunk); default the largest of BLOCK_KS that divides chunk.
      num_warps: Triton warps per program; num_stages: Triton's software-pipelining stages.
      interpret: run through Pallas's interpreter (any backend); default: everywhere but on GPU.

    Returns:
      [B, T, N, H] in q's dtype (float32 softmax and accumulation).
    """
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    chunk = chunk or default_chunk(B, K, S)
    block_k = block_k or next((b for b in BLOCK_KS if chunk and chunk % b == 0), None)
    if chunk is None or block_k is None or S % chunk or chunk % block_k or block_k < 16 or block_k & (block_k - 1):
        raise ValueError(f"keys S={S}, chunk={chunk}, block_k={block_k}: want chunk dividing S and a power-of-two "
                         "block_k >= 16 dividing chunk")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    rows = power_of_two_rows(T)
    if rows != T:  # Triton's dots want >= 16 rows, and its tensors power-of-two sizes: pad with queries never read
        q = jnp.pad(q, ((0, 0), (0, rows - T), (0, 0), (0, 0)))
        if mask is not None:
            mask = jnp.pad(mask, ((0, 0), (0, 0), (0, rows - T), (0, 0)))
    outs = _call(q.reshape(B, rows, K, N // K, H), k, v, mask, chunk, block_k, num_warps, num_stages, interpret)
    if chunk == S:  # normalised in the kernel
        return outs[0].reshape(B, rows, N, H)[:, :T]
    o, m, l = outs
    # The combine: o [B, C, T, K, G, H], m and l [B, C, T, K, G] -> [B, T, K, G, H].
    top = jax.lax.optimization_barrier(m.max(axis=1, keepdims=True))  # barrier: as jax's own decode_attention
    weight = jnp.exp(m - top)  # [B, C, T, K, G]: exp(m_c - M)
    out = (weight[..., None] * o).sum(axis=1) / (weight * l).sum(axis=1)[..., None]
    return out.reshape(B, rows, N, H)[:, :T].astype(q.dtype)


def _call(q, k, v, mask, chunk: int, block_k: int, num_warps: int, num_stages: int, interpret: bool):
    """The pallas_call: q [B, T, K, G, H], k/v [B, S, K, H], mask [B or 1, 1, T, S] or None -> per chunk c the
    partials o [B, C, T, K, G, H], m and l [B, C, T, K, G] (float32); with one chunk (chunk == S), [the output
    [B, T, K, G, H] in q's dtype]."""
    B, T, K, G, H = q.shape
    S = k.shape[1]
    chunks = S // chunk
    in_specs = [pl.BlockSpec((None, T, None, G, H), lambda b, h, c: (b, 0, h, 0, 0)),  # the group's queries
                pl.BlockSpec((None, chunk, None, H), lambda b, h, c: (b, c, h, 0)),  # its kv head's keys in chunk c
                pl.BlockSpec((None, chunk, None, H), lambda b, h, c: (b, c, h, 0))]
    operands = [q, k, v]
    if mask is not None:
        shared = mask.shape[0] == 1 and B > 1  # one mask for every row
        in_specs.append(pl.BlockSpec((None, None, T, chunk), lambda b, h, c: (0 if shared else b, 0, 0, c)))
        operands.append(mask.astype(jnp.int8))  # bytes in memory: Triton loads no i1 tensors from it
    if chunks == 1:
        out_shape = [jax.ShapeDtypeStruct((B, T, K, G, H), q.dtype)]
        out_specs = [pl.BlockSpec((None, T, None, G, H), lambda b, h, c: (b, 0, h, 0, 0))]
    else:
        out_shape = [jax.ShapeDtypeStruct((B, chunks, T, K, G, H), jnp.float32),
                     jax.ShapeDtypeStruct((B, chunks, T, K, G), jnp.float32),
                     jax.ShapeDtypeStruct((B, chunks, T, K, G), jnp.float32)]
        out_specs = [pl.BlockSpec((None, None, T, None, G, H), lambda b, h, c: (b, c, 0, h, 0, 0)),
                     pl.BlockSpec((None, None, T, None, G), lambda b, h, c: (b, c, 0, h, 0)),
                     pl.BlockSpec((None, None, T, None, G), lambda b, h, c: (b, c, 0, h, 0))]
    kernel = functools.partial(_kernel, groups=G, block_k=block_k, steps=chunk // block_k,
                               scale=1.0 / math.sqrt(H), masked=mask is not None, normalize=chunks == 1)
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(B, K, chunks),
        in_specs=in_specs,
        out_specs=out_specs,
        compiler_params=None if interpret else triton_params(num_warps, num_stages),
        interpret=interpret,
        name="window_attention",
    )(*operands)


def _kernel(q_ref, k_ref, v_ref, *refs, groups: int, block_k: int, steps: int, scale: float, masked: bool,
            normalize: bool):
    """One program (row b, kv head h, chunk c): q_ref [T, G, H]; k_ref, v_ref [chunk, H]; mask_ref [T, chunk] int8
    (when `masked`); out o_ref [T, G, H], m_ref and l_ref [T, G]; with `normalize`, only o_ref, holding o / l.
    Each query head of the group walks the chunk in turn (its keys stay in L1/L2 for the next head)."""
    mask_ref = refs[0] if masked else None
    o_ref, *stats = refs[1:] if masked else refs
    T, _, H = q_ref.shape
    for g in range(groups):
        q = q_ref[:, g, :]  # [T, H]

        def step(i, carry, q=q):
            o, m, l = carry  # [T, H], [T], [T]
            start = pl.multiple_of(i * block_k, block_k)
            keys = k_ref[pl.ds(start, block_k), :]  # [block_k, H]
            s = jax.lax.dot_general(q, keys, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
            if masked:
                s = jnp.where(mask_ref[:, pl.ds(start, block_k)] != 0, s, MASKED)  # [T, block_k]
            m_new = jnp.maximum(m, s.max(axis=1))
            p = jnp.exp(s - m_new[:, None])
            rescale = jnp.exp(m - m_new)  # the running sums were relative to the old max
            values = v_ref[pl.ds(start, block_k), :]
            o = o * rescale[:, None] + jax.lax.dot(p.astype(values.dtype), values, preferred_element_type=jnp.float32)
            return o, m_new, l * rescale + p.sum(axis=1)

        init = (jnp.zeros((T, H), jnp.float32), jnp.full((T,), MASKED, jnp.float32), jnp.zeros((T,), jnp.float32))
        o, m, l = jax.lax.fori_loop(0, steps, step, init)
        if normalize:
            o_ref[:, g, :] = (o / l[:, None]).astype(o_ref.dtype)
        else:
            o_ref[:, g, :] = o
            stats[0][:, g] = m
            stats[1][:, g] = l
