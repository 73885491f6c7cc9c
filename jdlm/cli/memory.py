"""Will a model fit? An estimate of the memory a decode needs, checked before anything is allocated.

A model that does not fit would otherwise die inside XLA ("out of memory allocating 36 GB"), after minutes of
work, as an internal error. The estimate is deliberately simple: weights, KV cache and the largest activations.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jdlm.errors import UsageError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GB = 1e9


def decode_bytes(config, dtype: str, *, rows: int = 1, seq_len: int = 0, stored: str | None = None,
                 shards: int = 1) -> int:
    """Bytes to hold `config`'s weights in `dtype` and decode `rows` sequences of `seq_len` tokens.

    Weights: n_params x bytes per dtype (plus the stored copy while it is cast, when `stored` differs), over
    `shards` devices when restored sharded (`--mesh model=N`). KV cache: keys and values of every layer and
    position. Activations: a float32 MLP and logits row per position.
    """
    weights = config.n_params * DTYPE_BYTES[dtype]
    if stored is not None and stored != dtype and stored in DTYPE_BYTES:
        weights += config.n_params * DTYPE_BYTES[stored]
    weights //= shards
    kv = 2 * config.n_layers * rows * seq_len * config.n_kv_heads * config.head_dim * DTYPE_BYTES[dtype]
    activations = rows * seq_len * (3 * config.mlp_hidden + config.vocab_size) * 4
    return weights + kv + activations


def available_bytes() -> tuple[int | None, str]:
    """(bytes, where): the first device's memory on an accelerator, physical memory on CPU; None if unknown."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine"
        except (ValueError, OSError, AttributeError):  # not every OS reports it
            return None, "this machine"
    stats = device.memory_stats() or {}
    return stats.get("bytes_limit"), f"the {device.device_kind}"


def check_fits_memory(config, dtype: str, what: str, *, rows: int = 1, seq_len: int = 0,
                      stored: str | None = None, shards: int = 1) -> None:
    """UsageError naming what to change when the estimate exceeds the memory there is (per device: the weights
    split over `shards`)."""
    need = decode_bytes(config, dtype, rows=rows, seq_len=seq_len, stored=stored, shards=shards)
    have, where = available_bytes()
    if have is None or need <= have:
        return
    hints = []
    if dtype == "float32":
        half = decode_bytes(config, "bfloat16", rows=rows, seq_len=seq_len, stored=stored, shards=shards)
        hints.append(f"--dtype bfloat16 (about {half / GB:.1f} GB)")
    if rows > 1:
        hints.append("a smaller --batch-size")
    hints.append("a GPU with more memory" if where == "this machine" else "a device with more memory")
    split = f" over {shards} devices" if shards > 1 else ""
    raise UsageError(f"{what} in {dtype} needs about {need / GB:.1f} GB{' per device' if split else ''} "
                     f"({config.n_params / 1e9:.1f}B parameters x {DTYPE_BYTES[dtype]} bytes{split}, plus KV cache "
                     f"and activations) but {where} has "
                     f"{have / GB:.1f} GB; use {', or '.join(hints)}")


def check_checkpoint_memory(directory: Path, dtype: str | None, what: str, shards: int = 1) -> None:
    """Refuses a checkpoint whose weights cannot fit in `dtype` (None: as stored), before loading them; `shards`:
    the devices each weight is split over (restored sharded, no device holds the whole)."""
    from jdlm.config import load_config

    try:
        stored = json.loads((directory / "manifest.json").read_text()).get("dtype")
        config = load_config(directory / "config.json")
    except (OSError, ValueError):  # not a complete jdlm checkpoint: loading it says what is wrong
        return
    if (dtype or stored) in DTYPE_BYTES:
        check_fits_memory(config, dtype or stored, what, stored=stored, shards=shards)
