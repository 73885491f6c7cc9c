"""Fused projections (jdlm.model.fuse_projections): one q|k|v and one gate|up weight per layer give the same
forward, decode and quantisation as the separate weights, and the layout stays a runtime one."""

from __future__ import annotations

import argparse

import jax
import numpy as np
import pytest

import jdlm
from jdlm import quantize as Q
from jdlm import sharding
from jdlm import strategies as S
from jdlm.cli.common import room_to_fuse, runtime_layout
from jdlm.errors import ShardingError
from jdlm.model import forward, fuse_projections, is_fused

# LLaDA's layout (as many kv heads as query heads) and Dream's (grouped kv heads, q/k/v biases, shifted logits).
LAYOUTS = {
    "llada": dict(n_heads=4, n_kv_heads=4),
    "dream": dict(n_heads=6, n_kv_heads=2, qkv_bias=True, logits_shift=True, family="dream"),
}


def params_for(layout: str):
    cfg = jdlm.tiny(n_layers=2, d_model=32, head_dim=8, mlp_hidden=48, **LAYOUTS[layout])
    return jdlm.init_params(cfg, jax.random.key(5), std=0.3)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("mode", [None, "int8"])
def test_forward_is_unchanged(layout, mode):
    params = Q.quantize_params(params_for(layout), mode)
    fused = fuse_projections(params)
    assert is_fused(fused) and not is_fused(params)
    layer = fused.weights["layers"][0]
    c = params.config
    G = c.n_heads // c.n_kv_heads
    assert layer["qkv"].shape == (c.d_model, c.n_kv_heads, G + 2, c.head_dim)
    if mode == "int8":  # gate and up as byte pairs (jdlm/kernels/int8_swiglu.py)
        assert layer["gate_up_pairs"].shape == (c.d_model, c.mlp_hidden) and "gate_up" not in layer
    else:
        assert layer["gate_up"].shape == (c.d_model, 2, c.mlp_hidden)
    assert not {"q", "k", "v", "gate", "up"} & set(layer)
    if mode:
        assert layer["qkv_scale"].shape == layer["qkv"].shape[1:] and Q.mode_of(fused.weights) == mode
    assert Q.weight_bytes(fused.weights) == Q.weight_bytes(params.weights)
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, c.mask_id)
    np.testing.assert_allclose(forward(fused, tokens).logits, forward(params, tokens).logits, atol=1e-5, rtol=1e-5)
    assert fuse_projections(fused) is fused


def test_quantising_commutes_with_fusing():
    params = params_for("dream")
    a = fuse_projections(Q.quantize_params(params, "int8")).weights["layers"][1]
    b = Q.quantize_params(fuse_projections(params), "int8").weights["layers"][1]
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("spec", ["low_confidence dual", "threshold:0.5 prefix"])
def test_decode_gives_the_same_tokens(spec):
    params = params_for("dream")
    prompt = jax.random.randint(jax.random.key(2), (2, 6), 0, params.config.mask_id)
    strategy = S.parse_strategy(spec, S.Strategy(schedule=S.Schedule(gen_length=8, block_length=4, steps=8)))
    a, b = jdlm.decode(params, prompt, strategy), jdlm.decode(fuse_projections(params), prompt, strategy)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.nfe, b.nfe)


def test_save_refuses_fused_params(tmp_path):
    with pytest.raises(jdlm.CheckpointError, match="fused projections"):
        jdlm.save(tmp_path / "ckpt", fuse_projections(params_for("llada")))
    assert not (tmp_path / "ckpt").exists()


def test_params_on_a_mesh_are_refused():
    params = sharding.shard_params(params_for("llada"), sharding.make_mesh(model=1, devices=jax.devices()[:1]))
    with pytest.raises(ShardingError, match="one device"):
        fuse_projections(params)


def test_free_inputs_keeps_the_peak_to_one_layer():
    params = params_for("dream")
    tokens = jax.random.randint(jax.random.key(1), (1, 8), 0, params.config.mask_id)
    expected = forward(params, tokens).logits
    fused = fuse_projections(params, free_inputs=True)
    layer = params.weights["layers"][0]
    assert all(layer[name].is_deleted() for name in ("q", "k", "v", "gate", "up"))
    assert not layer["o"].is_deleted()  # shared with the fused params
    np.testing.assert_allclose(forward(fused, tokens).logits, expected, atol=1e-5, rtol=1e-5)


def test_the_cli_fuses_only_with_room_for_a_second_copy():
    params = params_for("dream")
    replaced = sum(layer[n].nbytes for layer in params.weights["layers"] for n in ("q", "k", "v", "gate", "up"))
    assert room_to_fuse(params, {"bytes_limit": replaced + 100, "bytes_in_use": 100})
    assert not room_to_fuse(params, {"bytes_limit": replaced + 100, "bytes_in_use": 101})
    assert not room_to_fuse(params, None) and not room_to_fuse(params, {})  # unknown: leave the weights alone


class _RoomyDevice:
    def memory_stats(self):
        return {"bytes_limit": 1 << 40, "bytes_in_use": 0}


def test_the_cli_fuses_on_a_gpu_only_unless_told_not_to(monkeypatch):
    params = params_for("llada")
    assert runtime_layout(argparse.Namespace(fuse=True), params) is params  # this CPU: as loaded
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda *a: [_RoomyDevice()])
    assert runtime_layout(argparse.Namespace(fuse=False), params) is params
    assert is_fused(runtime_layout(argparse.Namespace(fuse=True), params))
    assert is_fused(runtime_layout(argparse.Namespace(), params_for("llada")))  # a command without the flag


def test_prefetch_expects_the_layout_the_loaded_weights_will_get(monkeypatch):
    """`jdlm generate` picks the layout of the decode it prefetches before its weights are on the device: with room
    for the fused copy only while they are not, it must expect them separate, as `runtime_layout` will keep them."""
    from jdlm.cli.common import will_fuse

    shapes = jax.eval_shape(lambda: params_for("llada"))
    weights = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(shapes))
    replaced = sum(layer[n].size * layer[n].dtype.itemsize for layer in shapes.weights["layers"]
                   for n in ("q", "k", "v", "gate", "up"))
    limit = {}

    class Device:
        def memory_stats(self):
            return {"bytes_limit": limit["bytes"], "bytes_in_use": 0}

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda *a: [Device()])
    limit["bytes"] = weights + replaced - 1
    assert will_fuse(argparse.Namespace(fuse=True), shapes)  # the weights' bytes not counted: room
    assert not will_fuse(argparse.Namespace(fuse=True), shapes, loading=True)
    limit["bytes"] = weights + replaced
    assert will_fuse(argparse.Namespace(fuse=True), shapes, loading=True)


def test_sharding_fused_params_is_refused():
    with pytest.raises(ShardingError, match="fused projections"):
        sharding.shard_params(fuse_projections(params_for("llada")),
                              sharding.make_mesh(model=1, devices=jax.devices()[:1]))


def test_bench_times_the_full_forward_of_each_layout(monkeypatch):
    from jdlm import bench

    monkeypatch.setattr(bench, "_forward_seconds", {})
    params = params_for("llada")
    strategy = S.Strategy(schedule=S.Schedule(gen_length=8, block_length=4, steps=8))
    for weights in (params, fuse_projections(params), Q.quantize_params(params, "int8")):
        bench.time_full_forward(weights, strategy, batch=1, prompt_len=4, repeats=1)
    assert len(bench._forward_seconds) == 3  # not the separate float weights' time for all three
