"""The benchmark grid (models x batch sizes x prompt lengths x strategies), run in order of memory need within a
time budget, and the environment a bench record names (device, versions, date).

`jdlm bench --suite full` runs SUITES["full"]: random LLaDA-8B and Dream-7B weights, batch 1, 8 and 32, prompts of
256 and 2048 tokens, 256 generated in blocks of 32, one token per step and four per step with the dual cache.
`--suite smoke` runs the same grid at tiny shapes on a CPU in seconds (what CI runs).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax

from jdlm import strategies as S


@dataclasses.dataclass(frozen=True)
class Grid:
    """What a suite runs: random weights at `models` shapes (names of `jdlm.bench.RANDOM_MODELS`), every batch size
    with every prompt length, `gen_length` tokens in blocks of `block_length`, `suite_strategies`."""

    models: tuple[str, ...]
    batches: tuple[int, ...]
    prompts: tuple[int, ...]
    gen_length: int
    block_length: int


SUITES = {
    "full": Grid(models=("llada-8b", "dream-7b"), batches=(1, 8, 32), prompts=(256, 2048), gen_length=256,
                 block_length=32),
    "smoke": Grid(models=("test", "test-dream"), batches=(1, 2), prompts=(8, 16), gen_length=16, block_length=8),
}


def suite_strategies(gen_length: int, block_length: int) -> dict[str, S.Strategy]:
    """One token per step and four per step, both with the dual cache: a decode of both kinds of forward (a full
    one at each block start, cached steps between). Random weights are never confident, so a threshold rule would
    also reveal one token per step; these name what runs."""
    base = S.Strategy(schedule=S.Schedule(gen_length=gen_length, block_length=block_length, steps=gen_length))
    specs = ("low_confidence dual", f"low_confidence dual steps={gen_length // 4}")
    return {spec: S.parse_strategy(spec, base) for spec in specs}


def cell_bytes(config, batch: int, prompt: int, gen_length: int, block_length: int, dtype: str) -> int:
    """Estimated bytes of one cell's decode with the dual cache (`jdlm.memory.decode_memory`, within a few percent
    of XLA's account at 8B shapes), with the attention the device will run (fused on a GPU in half precision)."""
    import jax.numpy as jnp

    from jdlm.memory import DTYPE_BYTES, decode_memory
    from jdlm.model import default_attention_impl

    flash = default_attention_impl(jnp.dtype(dtype)) == "cudnn"
    dtype = dtype if dtype in DTYPE_BYTES else "float32"
    return decode_memory(config, batch=batch, prompt_len=prompt, gen_length=gen_length, block_length=block_length,
                         cache="dual", dtype=dtype, flash_attention=flash).total


def cell_order(config, batches, prompts, gen_length: int, block_length: int, dtype: str) -> list[tuple[int, int]]:
    """(batch, prompt length) pairs, least memory first (`cell_bytes`): the device's peak so far is then each
    cell's own, and the cells that may not fit come last."""
    return sorted(((b, p) for b in batches for p in prompts),
                  key=lambda cell: cell_bytes(config, *cell, gen_length, block_length, dtype))


def run_grid(models: dict[str, Callable], cells: Callable, strategies: dict, *, run_cell: Callable,
             budget_s: float | None = None, progress: Callable = lambda _: None) -> tuple[list, list]:
    """Runs `run_cell(params, model, batch, prompt, name, strategy)` over every model, cell and strategy.

    models: name -> a function returning its weights (called when its turn comes; the weights are dropped after).
    cells: a function of the model's name and weights returning its (batch, prompt) pairs, in order (`cell_order`).
    budget_s: no new model or cell starts once this many seconds have passed; what did not run is returned as
      skipped ({"model", "batch", "prompt_len", "strategy", "reason"}).
    Returns (results, skipped).
    """
    start = time.perf_counter()
    results, skipped = [], []

    def over() -> bool:
        return budget_s is not None and time.perf_counter() - start > budget_s

    for model, make in models.items():
        if over():
            skipped.append({"model": model, "batch": None, "prompt_len": None, "strategy": None,
                            "reason": "time budget"})
            continue
        params = make()
        for batch, prompt in cells(model, params):
            for name, strategy in strategies.items():
                if over():
                    skipped.append({"model": model, "batch": batch, "prompt_len": prompt, "strategy": name,
                                    "reason": "time budget"})
                    continue
                progress(f"{model}: {name}, batch {batch}, prompt {prompt}")
                results.append(run_cell(params, model, batch, prompt, name, strategy))
        del params
    return results, skipped


def describe_environment() -> dict:
    """Where a bench ran: the device, the versions of jax, jaxlib, flax and jdlm (and its git commit when run
    from a checkout), CUDA and cuDNN where the backend is CUDA, the persistent compilation cache in use (None: every
    compile_s is a cold compile), the command line and the UTC date."""
    import flax
    import jaxlib

    device = jax.devices()[0]
    env = {"device": device.device_kind, "platform": device.platform, "device_count": jax.device_count(),
           "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "jdlm": _jdlm_version(),
           "jdlm_commit": _git_commit(), "python": platform.python_version(), "cuda": None, "cudnn": None,
           "compilation_cache": jax.config.jax_compilation_cache_dir or None,
           "command": " ".join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]]),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device.platform == "gpu":
        env.update(_cuda_versions())
    return env


def _jdlm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jdlm")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=False, timeout=5, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cuda_versions() -> dict:
    """CUDA runtime, driver and cuDNN versions as the jaxlib CUDA plugin reports them (ints such as 12080 and
    90800), or None for any it does not."""
    out = {"cuda": None, "cudnn": None, "cuda_driver": None}
    try:
        from jax._src.lib import cuda_versions
    except ImportError:
        return out
    if cuda_versions is None:
        return out
    for key, name in (("cuda", "cuda_runtime_get_version"), ("cudnn", "cudnn_get_version"),
                      ("cuda_driver", "cuda_driver_get_version")):
        call = getattr(cuda_versions, name, None)
        out[key] = None if call is None else int(call())
    return out
