"""Decode throughput benchmark: tokens/s and NFE per strategy, compile time kept apart from run time, and every
time beside its floor (`jdlm.roofline`) measured in the same run.

    floors = roofline.measure_floors(params.dtype)
    r = bench_strategy(params, "low_confidence dual", strategy, batch=8, prompt_len=256, floors=floors)
    r.floor_ratio        # run_s / floor_s: 1.0 would be the device's limit
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jdlm import roofline, sharding
from jdlm import strategies as S
from jdlm.config import dream_7b, llada_8b, tiny
from jdlm.decoding import Strategy, decode, executables
from jdlm.kernels import switch as kernel_switches
from jdlm.model import Params, forward, is_fused, param_shapes
from jdlm.quantize import mode_of

RANDOM_MODELS = {"llada-8b": llada_8b, "dream-7b": dream_7b, "test": tiny,
                 "test-dream": lambda: tiny(family="dream", n_kv_heads=2, qkv_bias=True, logits_shift=True)}


DEFAULT_SPECS = ("low_confidence keep_idle_steps=true", "threshold:0.9", "threshold:0.9 prefix", "threshold:0.9 dual")


def default_strategies(gen_length: int, block_length: int) -> dict[str, Strategy]:
    """The reference set, named as the CLI spells it: LLaDA's one token per step, Fast-dLLM threshold 0.9 with each
    cache, and 4 tokens per step with the dual cache."""
    base = S.Strategy(schedule=S.Schedule(gen_length=gen_length, block_length=block_length, steps=gen_length))
    specs = DEFAULT_SPECS + (f"low_confidence dual steps={gen_length // 4}",)
    return {spec: S.parse_strategy(spec, base) for spec in specs}


def random_params(name: str, dtype=jnp.bfloat16, seed: int = 0) -> Params:
    """Random weights at a published model's shapes (no download), created on the default device: normal with
    std 0.02 (norms at 1), as `init_params`, but not the same values.

    One small compiled generator per distinct tensor shape (7 for LLaDA-8B, 10 for Dream-7B), drawing each tensor
    directly in `dtype` from `fold_in(key(seed), index)`, with no float32 copy of any tensor; in a later process the
    generators come from jdlm's store of executables without even being traced (`jdlm.decoding.executables`; from
    JAX's persistent cache with the store off; scripts/bench_startup.py times it), and nothing else compiles (the
    norms' ones are copied from the host). One jitted initialiser for the whole model took XLA 3 minutes to compile
    at 8B shapes; eager ops, three compiles per shape."""
    config = RANDOM_MODELS[name]()
    seed = jax.device_put(np.uint32(seed))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(param_shapes(config, dtype).weights)
    arrays = [jax.device_put(np.ones(leaf.shape, leaf.dtype)) if "norm" in jax.tree_util.keystr(path)
              else _normal(seed, i, leaf.shape, leaf.dtype) for i, (path, leaf) in enumerate(leaves)]
    return Params(config=config, weights=jax.tree.unflatten(treedef, arrays))


def _normal(seed: jax.Array, index: int, shape: tuple[int, ...], dtype) -> jax.Array:
    """Normal(0, 0.02) of `shape` in `dtype`, drawn from fold_in(key(seed), index); seed: [] uint32 on the device."""
    dtype = jnp.dtype(dtype)
    name = f"random_normal_{'x'.join(map(str, shape))}_{dtype.name}"
    return executables.call(name, _normal_generator(tuple(shape), dtype), seed, np.uint32(index))


@functools.cache
def _normal_generator(shape: tuple[int, ...], dtype):
    """The compiled generator of one tensor shape: (seed, index) -> the tensor."""
    return jax.jit(lambda seed, index: jax.random.normal(jax.random.fold_in(jax.random.key(seed), index), shape, dtype)
                   * jnp.asarray(0.02, dtype))


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """One timed strategy; `strategy` is its spec (as `--strategy` reads it), `strategy_config` the whole strategy
    (`jdlm.Strategy.to_dict()`), so the run can be repeated. `mesh`: the mesh the weights lived on, its axis names
    and sizes ({"data": 2, "model": 4}), None on one device; `devices`: how many devices decoded; `quantization`:
    the linear weights' quantisation ("int8", "fp8"), None for float weights; `fused_projections`: whether each
    layer's q|k|v and gate|up ran as one matmul each (`jdlm.fuse_projections`); `kernels`: the modes of jdlm's
    hand-written kernels when the decode was traced (`jdlm.kernels.switch.all_modes()`, e.g.
    "float_linear=auto quantized_linear=off window_attention=auto").

    Against the floors (None on a mesh, where one device's floors do not apply):
      full_forwards, cached_forwards: the forward passes of each kind the decode ran (`DecodeResult.full_forwards`).
      floor_s: the least time those forwards could take (`roofline.decode_floor`); floor_ratio = run_s / floor_s.
      full_forward_s: one full forward at these shapes, timed alone; full_forward_floor_s, full_forward_ratio.
      cached_step_ms: (run_s - full_forwards * full_forward_s) / cached_forwards, the mean cached step with the
        rule's work; cached_step_floor_ms, cached_step_ratio; None without cached steps.
      peak_bytes: the device's peak memory in use so far in this process (None where the device does not say).
    """

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
    model: str | None = None
    dtype: str | None = None
    forwards: int | None = None
    full_forwards: int | None = None
    cached_forwards: int | None = None
    floor_s: float | None = None
    floor_ratio: float | None = None
    full_forward_s: float | None = None
    full_forward_floor_s: float | None = None
    full_forward_ratio: float | None = None
    cached_step_ms: float | None = None
    cached_step_floor_ms: float | None = None
    cached_step_ratio: float | None = None
    peak_bytes: int | None = None
    quantization: str | None = None
    fused_projections: bool = False
    kernels: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def bench_strategy(params: Params, name: str, strategy: Strategy, *, batch: int = 1, prompt_len: int = 64,
                   repeats: int = 3, seed: int = 0, guide: Params | None = None,
                   floors: roofline.Floors | None = None, model: str | None = None) -> BenchResult:
    """Times one strategy: the first call (compile + run), then the median of `repeats` runs; with `floors`, also
    a full forward alone and the ratios to the floors.

    Tokens/s counts every generated position (batch * gen_length) per second of decode. `guide`: the AR guide's
    weights for a strategy with an ARGuide.
    """
    cfg = params.config
    mesh = sharding.mesh_of(params)
    prompt = random_prompt(cfg, batch, prompt_len, seed)
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
    forwards, full = int(result.forwards), int(result.full_forwards)
    against = {} if floors is None or mesh is not None else _against_floors(
        params, strategy, batch, prompt_len, run, full, forwards - full, floors, repeats)
    return BenchResult(strategy=name, batch=batch, prompt_len=prompt_len, gen_length=G,
                       compile_s=round(max(first - run, 0.0), 3), run_s=_round(run),
                       tokens_per_s=round(batch * G / run, 2), nfe=float(np.mean(np.asarray(result.nfe))),
                       device=jax.devices()[0].device_kind, strategy_config=strategy.to_dict(),
                       mesh=None if mesh is None else dict(mesh.shape), devices=1 if mesh is None else mesh.size,
                       model=model, dtype=str(params.dtype), forwards=forwards, full_forwards=full,
                       cached_forwards=forwards - full, peak_bytes=peak_bytes(),
                       quantization=mode_of(params.weights), fused_projections=is_fused(params),
                       kernels=kernel_switches.all_modes(), **against)


def random_prompt(cfg, batch: int, prompt_len: int, seed: int = 0) -> np.ndarray:
    """[batch, prompt_len] int32 ids below the mask id (no padding)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, min(cfg.vocab_size, cfg.mask_id), size=(batch, prompt_len)).astype(np.int32)


def _against_floors(params, strategy, batch, prompt_len, run_s, full, cached, floors, repeats) -> dict:
    floor = roofline.decode_floor(params, strategy, batch=batch, prompt_len=prompt_len, full=full, cached=cached,
                                  floors=floors)
    forward_s = time_full_forward(params, strategy, batch, prompt_len, repeats=max(repeats, 3))
    out = {"floor_s": _round(floor.total_s), "floor_ratio": _round(run_s / floor.total_s),
           "full_forward_s": _round(forward_s), "full_forward_floor_s": _round(floor.full_s),
           "full_forward_ratio": _round(forward_s / floor.full_s)}
    cached_s = (run_s - full * forward_s) / cached if cached else 0.0
    if cached_s > 0:  # separable: the full forwards' share is below the run's time
        out.update(cached_step_ms=_round(1e3 * cached_s), cached_step_floor_ms=_round(1e3 * floor.cached_s),
                   cached_step_ratio=_round(cached_s / floor.cached_s))
    return out


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def time_full_forward(params: Params, strategy: Strategy, batch: int, prompt_len: int, repeats: int = 3) -> float:
    """Seconds of one full forward as the decode runs it (its rows, the sequence P + G, the logits of its span,
    the KV cache built when the strategy has one): the median of `repeats` after a warm-up. Timed once per shape
    and weight layout (quantisation, fused projections) in a process (the strategies of one cell share it)."""
    rows = 2 * batch if strategy.guidance else batch
    L = prompt_len + strategy.schedule.gen_length
    logits = roofline.logits_positions(strategy, prompt_len)
    start = prompt_len if logits <= strategy.schedule.gen_length else 0
    shape = (params.config, str(params.dtype), mode_of(params.weights), is_fused(params), rows, L, start, logits,
             strategy.cache.reuses_keys)
    if shape not in _forward_seconds:
        tokens = jnp.asarray(random_prompt(params.config, rows, L, seed=1))
        call = functools.partial(_full_forward, params, tokens, start, logits, strategy.cache.reuses_keys)
        jax.block_until_ready(call())  # not kept: a KV cache at batch 32 is tens of GB
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            times.append(time.perf_counter() - t0)
        _forward_seconds[shape] = statistics.median(times)
    return _forward_seconds[shape]


_forward_seconds: dict[tuple, float] = {}


@functools.partial(jax.jit, static_argnums=(3, 4))
def _full_forward(params, tokens, start, length: int, return_cache: bool):
    out = forward(params, tokens, logits_slice=(start, length), return_cache=return_cache)
    return out.logits, out.cache


def peak_bytes() -> int | None:
    """The default device's peak bytes in use since the process started, or None where it does not say (CPU)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def run(params: Params, strategies: dict[str, Strategy], *, batch: int = 1, prompt_len: int = 64,
        repeats: int = 3, progress=print, guide: Params | None = None, floors: roofline.Floors | None = None,
        model: str | None = None) -> list[BenchResult]:
    out = []
    for name, strategy in strategies.items():
        r = bench_strategy(params, name, strategy, batch=batch, prompt_len=prompt_len, repeats=repeats,
                           guide=guide if strategy.guide is not None else None, floors=floors, model=model)
        if progress:
            ratio = "" if r.floor_ratio is None else f"  {r.floor_ratio:.2f}x floor"
            progress(f"{name:>22}: {r.tokens_per_s:9.1f} tok/s  NFE {r.nfe:6.1f}  run {r.run_s:.3f}s{ratio}  "
                     f"compile {r.compile_s:.1f}s")
        out.append(r)
    return out


def to_json(results: list[BenchResult], floors: roofline.Floors | None = None, skipped=(),
            environment: dict | None = None) -> str:
    """The bench record: {"environment": ..., "floors": ..., "results": [...], "skipped": [...]}."""
    from jdlm.bench_suite import describe_environment

    record = {"environment": environment or describe_environment(),
              "floors": None if floors is None else floors.as_dict(),
              "results": [r.as_dict() for r in results], "skipped": list(skipped)}
    return json.dumps(record, indent=1)
