"""Decode throughput benchmark: tokens/s and NFE per strategy, compile time kept apart from run time."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jdlm import sharding
from jdlm import strategies as S
from jdlm.config import dream_7b, llada_8b, tiny
from jdlm.decoding import Strategy, decode
from jdlm.model import Params, init_params

RANDOM_MODELS = {"llada-8b": llada_8b, "dream-7b": dream_7b, "test": tiny}


DEFAULT_SPECS = ("low_confidence keep_idle_steps=true", "threshold:0.9", "threshold:0.9 prefix", "threshold:0.9 dual")


def default_strategies(gen_length: int, block_length: int) -> dict[str, Strategy]:
    """The reference set, named as the CLI spells it: LLaDA's one token per step, Fast-dLLM threshold 0.9 with each
    cache, and 4 tokens per step with the dual cache."""
    base = S.Strategy(schedule=S.Schedule(gen_length=gen_length, block_length=block_length, steps=gen_length))
    specs = DEFAULT_SPECS + (f"low_confidence dual steps={gen_length // 4}",)
    return {spec: S.parse_strategy(spec, base) for spec in specs}


def random_params(name: str, dtype=jnp.bfloat16, seed: int = 0) -> Params:
    """Random weights at a published model's shapes (no download), created on the default device."""
    config = RANDOM_MODELS[name]()
    # Tensor by tensor, not one jitted initialiser: XLA took about 3 minutes to compile that at 8B shapes; eager
    # ops compile once per distinct shape (a handful) and hold one float32 tensor at a time.
    return init_params(config, jax.random.key(seed), dtype)


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """One timed strategy; `strategy` is its spec (as `--strategy` reads it), `strategy_config` the whole strategy
    (`jdlm.Strategy.to_dict()`), so the run can be repeated. `mesh`: the mesh the weights lived on, its axis names
    and sizes ({"data": 2, "model": 4}), None on one device; `devices`: how many devices decoded."""

    strategy: str
    batch: int
    prompt_len: int
    gen_length: int
    compile_s: float
    run_s: float
    tokens_per_s: float
    nfe: float
    device: str
    strategy_config: dict
    mesh: dict[str, int] | None = None
    devices: int = 1

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def bench_strategy(params: Params, name: str, strategy: Strategy, *, batch: int = 1, prompt_len: int = 64,
                   repeats: int = 3, seed: int = 0, guide: Params | None = None) -> BenchResult:
    """Times one strategy: the first call (compile + run), then the median of `repeats` runs.

    Tokens/s counts every generated position (batch * gen_length) per second of decode. `guide`: the AR guide's
    weights for a strategy with an ARGuide.
    """
    cfg = params.config
    mesh = sharding.mesh_of(params)
    rng = np.random.default_rng(seed)
    vocab_hi = min(cfg.vocab_size, cfg.mask_id)
    prompt = rng.integers(0, vocab_hi, size=(batch, prompt_len)).astype(np.int32)
    t0 = time.perf_counter()
    result = decode(params, prompt, strategy, guide=guide)
    jax.block_until_ready(result.tokens)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = decode(params, prompt, strategy, guide=guide)
        jax.block_until_ready(result.tokens)
        times.append(time.perf_counter() - t0)
    run = statistics.median(times)
    G = strategy.schedule.gen_length
    return BenchResult(strategy=name, batch=batch, prompt_len=prompt_len, gen_length=G,
                       compile_s=round(max(first - run, 0.0), 3), run_s=round(run, 4),
                       tokens_per_s=round(batch * G / run, 2), nfe=float(np.mean(np.asarray(result.nfe))),
                       device=jax.devices()[0].device_kind, strategy_config=strategy.to_dict(),
                       mesh=None if mesh is None else dict(mesh.shape), devices=1 if mesh is None else mesh.size)


def run(params: Params, strategies: dict[str, Strategy], *, batch: int = 1, prompt_len: int = 64,
        repeats: int = 3, progress=print, guide: Params | None = None) -> list[BenchResult]:
    out = []
    for name, strategy in strategies.items():
        r = bench_strategy(params, name, strategy, batch=batch, prompt_len=prompt_len, repeats=repeats,
                           guide=guide if strategy.guide is not None else None)
        if progress:
            progress(f"{name:>22}: {r.tokens_per_s:9.1f} tok/s  NFE {r.nfe:6.1f}  run {r.run_s:.3f}s  "
                     f"compile {r.compile_s:.1f}s")
        out.append(r)
    return out


def to_json(results: list[BenchResult]) -> str:
    return json.dumps([r.as_dict() for r in results], indent=1)
