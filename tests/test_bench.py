"""`jdlm bench` against its floors: the forward costs (checked against XLA's own count), the full/cached forward
counts of a decode, the random weights, the grid, the JSON record of a smoke suite, and the start-up script."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm import bench, roofline
from jdlm import strategies as S
from jdlm.bench_suite import SUITES, cell_order, suite_strategies
from jdlm.config import llada_8b, tiny
from jdlm.model import forward, init_params, param_shapes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["llada", "dream"])
def wide(request):
    """Small enough for a CPU, wide enough that matmuls are most of the FLOPs."""
    extra = {} if request.param == "llada" else {"family": "dream", "qkv_bias": True, "logits_shift": True}
    cfg = tiny(d_model=256, n_heads=4, n_kv_heads=2, head_dim=64, mlp_hidden=1024, vocab_size=512, mask_id=500,
               **extra)
    return init_params(cfg, jax.random.key(0))


def _xla_cost(fn, *args) -> dict:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return cost[0] if isinstance(cost, list) else cost


def test_forward_flops_match_xla_and_bytes_are_a_lower_bound(wide):
    B, L, W = 2, 64, 16
    tokens = jnp.zeros((B, L), jnp.int32)
    full = _xla_cost(lambda p, t: forward(p, t, logits_slice=(32, W), return_cache=True), wide, tokens)
    ours = roofline.forward_cost(wide, rows=B, queries=L, keys=L, logits=W, kv_read=0, kv_written=L)
    assert ours.flops == pytest.approx(full["flops"], rel=0.02)
    assert 0 < ours.bytes <= full["bytes accessed"]

    kv = forward(wide, tokens, return_cache=True).cache
    window = _xla_cost(lambda p, t, c: forward(p, t, cache=c, window_start=32, logits_slice=(0, W)), wide,
                       tokens[:, 32:32 + W], kv)
    ours = roofline.forward_cost(wide, rows=B, queries=W, keys=L, logits=W, kv_read=L, kv_written=W)
    assert ours.flops == pytest.approx(window["flops"], rel=0.02)
    assert 0 < ours.bytes <= window["bytes accessed"]


def test_weights_read_leave_out_the_embedding_table_unless_tied():
    cfg = tiny()
    untied = init_params(cfg, jax.random.key(0))
    tied = init_params(tiny(tie_embeddings=True), jax.random.key(0))
    assert roofline.weight_bytes_read(untied) == 4 * (cfg.n_params - cfg.vocab_size * cfg.d_model)
    assert roofline.weight_bytes_read(tied) == 4 * tiny(tie_embeddings=True).n_params


def test_decode_floor_adds_the_forwards_of_each_kind():
    params = init_params(tiny(), jax.random.key(0))
    floors = roofline.Floors(matmul_tflops=1.0, copy_gbps=1.0, dtype="float32", matmul_n=1, copy_bytes=1, repeats=1)
    strategy = S.parse_strategy("low_confidence dual", S.Strategy(schedule=S.Schedule(gen_length=16,
                                                                                      block_length=8, steps=16)))
    floor = roofline.decode_floor(params, strategy, batch=1, prompt_len=8, full=2, cached=14, floors=floors)
    assert floor.total_s == pytest.approx(2 * floor.full_s + 14 * floor.cached_s)
    # At one byte per ns and one FLOP per ps, a batch-1 cached step is bound by its bytes: weights, the whole
    # cache read and the block's keys/values written.
    kv_position = 2 * 2 * 4 * 16 * 4  # k and v, 2 layers, 4 kv heads, head 16, float32
    assert floor.cached_s == pytest.approx((roofline.weight_bytes_read(params) + (24 + 8) * kv_position) / 1e9)
    doubled = roofline.decode_floor(params, strategy.replace(guidance=S.Guidance()), batch=1, prompt_len=8,
                                    full=2, cached=14, floors=floors)
    assert doubled.full_s > floor.full_s, "guidance doubles the rows of every forward"


@pytest.mark.parametrize("cache,refresh_every,full", [("none", None, 16), ("dual", None, 2), ("prefix", None, 2),
                                                      ("dual", 4, 4)])
def test_full_forwards_are_counted_in_the_loop(cache, refresh_every, full):
    params = init_params(tiny(), jax.random.key(0))
    strategy = S.parse_strategy(f"low_confidence {cache}", S.Strategy(schedule=S.Schedule(
        gen_length=16, block_length=8, steps=16)))
    if refresh_every:
        strategy = strategy.replace(cache=type(strategy.cache)(refresh_every=refresh_every))
    prompt = np.arange(1, 9, dtype=np.int32)[None]
    result = jdlm.decode(params, prompt, strategy)
    assert int(result.forwards) == 16 and int(result.full_forwards) == full
    *_, last = jdlm.decoding.decode_steps(params, prompt, strategy)
    assert int(last.full_forwards) == full


def test_random_params_have_the_model_shapes_and_spread():
    a, b = bench.random_params("test-dream", jnp.float32), bench.random_params("test-dream", jnp.float32)
    other = bench.random_params("test-dream", jnp.float32, seed=1)
    expected = param_shapes(a.config, jnp.float32)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), a.weights) == \
        jax.tree.map(lambda x: (x.shape, x.dtype), expected.weights)
    layer = a.weights["layers"][0]
    assert (np.asarray(layer["attn_norm"]) == 1).all() and (np.asarray(a.weights["final_norm"]) == 1).all()
    assert np.std(np.asarray(a.weights["embed"])) == pytest.approx(0.02, rel=0.05)
    assert not np.array_equal(layer["gate"], layer["up"]), "tensors of one shape must differ"
    assert jax.tree.all(jax.tree.map(np.array_equal, a.weights, b.weights)), "the same seed, the same weights"
    assert not np.array_equal(a.weights["embed"], other.weights["embed"])
    assert bench.random_params("test", jnp.bfloat16).weights["layers"][1]["q"].dtype == jnp.bfloat16


def test_cells_run_least_memory_first():
    order = cell_order(llada_8b(), (1, 8, 32), (256, 2048), 256, 32, "bfloat16")
    assert sorted(order) == sorted((b, p) for b in (1, 8, 32) for p in (256, 2048))
    assert order[0] == (1, 256) and order[-1] == (32, 2048)
    assert order.index((8, 256)) < order.index((8, 2048))


def test_measured_floors_are_positive():
    floors = roofline.measure_floors(jnp.float32, quick=True, repeats=2)
    assert floors.matmul_tflops > 0 and floors.copy_gbps > 0 and floors.dtype == "float32"
    assert math.isfinite(floors.matmul_tflops) and math.isfinite(floors.copy_gbps)


def _bench(tmp_path, monkeypatch, *extra) -> dict:
    from jdlm.cli import main

    monkeypatch.setenv("JDLM_COMPILATION_CACHE", "0")  # in-process: leave JAX's settings alone
    out = tmp_path / "bench.json"
    assert main(["bench", "--suite", "smoke", "--quiet", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_smoke_suite_json_has_every_field_and_finite_ratios(tmp_path, monkeypatch):
    record = _bench(tmp_path, monkeypatch, "--random", "test-dream", "--batch-size", "2", "--prompt-length", "8",
                    "--repeats", "1")
    env = record["environment"]
    for key in ("device", "platform", "jax", "jaxlib", "flax", "jdlm", "cuda", "cudnn", "date", "command"):
        assert key in env
    assert env["jax"] == jax.__version__ and env["platform"] == "cpu" and env["cuda"] is None
    assert record["floors"]["matmul_tflops"] > 0 and record["floors"]["copy_gbps"] > 0
    assert record["skipped"] == []
    rows = record["results"]
    assert [r["strategy"] for r in rows] == list(suite_strategies(16, 8))
    for r in rows:
        assert (r["model"], r["batch"], r["prompt_len"], r["gen_length"]) == ("test-dream", 2, 8, 16)
        assert r["full_forwards"] == 2 and r["cached_forwards"] == r["forwards"] - 2 > 0
        for key in ("floor_s", "floor_ratio", "full_forward_s", "full_forward_floor_s", "full_forward_ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        for key in ("cached_step_ms", "cached_step_floor_ms", "cached_step_ratio"):  # None when not separable
            assert r[key] is None or (math.isfinite(r[key]) and r[key] > 0), key
        assert r["floor_ratio"] == pytest.approx(r["run_s"] / r["floor_s"], rel=1e-2)
        assert r["peak_bytes"] is None  # the CPU does not say
        assert r["compile_s"] >= 0


def test_no_attention_kernel_holds_for_random_weights_on_a_mesh(tmp_path, monkeypatch):
    """--no-attention-kernel turns the kernel off (and `kernels` says so) also where random weights go onto a mesh,
    which skips `runtime_layout`."""
    from jdlm.kernels import window_attention

    with window_attention.use_kernel("auto"):
        record = _bench(tmp_path, monkeypatch, "--random", "test", "--batch-size", "1", "--prompt-length", "8",
                        "--repeats", "1", "--strategy", "low_confidence", "--mesh", "data=1", "--no-attention-kernel")
    (row,) = record["results"]
    assert row["mesh"] is not None and "window_attention=off" in row["kernels"].split()


def test_a_spent_budget_skips_and_lists_every_run(tmp_path, monkeypatch):
    record = _bench(tmp_path, monkeypatch, "--budget", "0")
    assert record["results"] == []
    assert [s["model"] for s in record["skipped"]] == list(SUITES["smoke"].models)
    assert all(s["reason"] == "time budget" for s in record["skipped"])


def test_startup_script_fills_the_cache_for_the_second_process(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "OUT": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_startup.py"), "--quick"], env=env,
                         capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "startup.json").read_text())
    assert report["cache_files"] > 0, "the first process wrote nothing to the compilation cache"
    for run in (report["first_process"], report["second_process"]):
        assert run["nfe"] == 16 and run["revealed_first_step"] >= 1
        marks = run["since_launch"]
        assert marks["imported_s"] <= marks["weights_s"] <= marks["first_tokens_s"] <= marks["decoded_s"]
    assert report["second_first_tokens_s"] == report["second_process"]["since_launch"]["first_tokens_s"]
    floor = report["jax_floor"]
    assert floor["jax_imported_s"] <= floor["backend_s"] <= floor["first_op_s"] <= floor["first_attention_s"]


def test_a_cell_that_cannot_fit_is_skipped_with_its_reason(tmp_path, monkeypatch):
    record = _bench(tmp_path, monkeypatch, "--random", "test", "--batch-size", "1", "--batch-size", "10000000",
                    "--prompt-length", "8", "--budget", "0")
    memory, budget = record["skipped"]
    assert (memory["batch"], memory["prompt_len"]) == (10000000, 8) and "needs about" in memory["reason"]
    assert budget == {"model": "test", "batch": None, "prompt_len": None, "strategy": None, "reason": "time budget"}
