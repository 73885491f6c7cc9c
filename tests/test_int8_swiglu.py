"""jdlm/kernels/int8_swiglu.py: the byte-pair layout of fused int8 gate|up, its kernel (Pallas's interpreter on
CPU, and its lowering for CUDA), and the model's forward and decode with the layout, against the unfused int8
params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdlm import decode
from jdlm import quantize as Q
from jdlm import strategies as S
from jdlm.config import tiny
from jdlm.kernels import int8_swiglu as I
from jdlm.kernels.switch import all_modes
from jdlm.model import forward, fuse_projections, init_params

# Wide enough for the kernel's tiling (D a multiple of BLOCK_K * SPLITS, F of BLOCK_N).
CONFIG = tiny(d_model=128, head_dim=32, mlp_hidden=256)


@pytest.fixture(autouse=True)
def mode_restored():
    with I.use_kernel("auto"):
        yield


def test_every_int8_value_comes_back_from_either_byte():
    values = jnp.arange(-128, 128, dtype=jnp.int32).astype(jnp.int8)
    pairs = Q.pair_bytes(values, values[::-1])
    assert pairs.dtype == jnp.int16 and pairs.shape == (256,)
    low, high = I.byte_values(pairs)
    assert low.dtype == high.dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(low, np.float32), np.arange(-128, 128))
    np.testing.assert_array_equal(np.asarray(high, np.float32), np.arange(127, -129, -1))
    np.testing.assert_array_equal(Q.split_pairs(pairs), np.stack([values, values[::-1]], axis=-1))


def test_pair_bytes_refuses_what_is_not_two_int8_arrays_of_one_shape():
    a = jnp.zeros((4, 8), jnp.int8)
    with pytest.raises(ValueError, match="two int8 arrays"):
        Q.pair_bytes(a, a.astype(jnp.int16))
    with pytest.raises(ValueError, match="two int8 arrays"):
        Q.pair_bytes(a, a[:, :4])


def quantized_pairs(d: int, f: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    gate, up = (jnp.asarray(rng.standard_normal((d, f)) * rng.uniform(0.05, 2.0, f), jnp.float32) for _ in "gu")
    (g_q, g_s), (u_q, u_s) = Q.quantize_array(gate, "int8", 1), Q.quantize_array(up, "int8", 1)
    reference = (g_q.astype(jnp.float32) * g_s, u_q.astype(jnp.float32) * u_s)
    return Q.pair_bytes(g_q, u_q), jnp.stack([g_s, u_s]), reference


@pytest.mark.parametrize("rows", I.ROWS)
def test_kernel_and_xla_compute_the_dequantised_swiglu(rows):
    """x holds float16 values (the kernel rounds x to float16), so kernel and XLA differ only in summation order."""
    pairs, scale, (gate, up) = quantized_pairs(256, 128)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((rows, 256)), jnp.float16).astype(jnp.float32)
    x64 = np.asarray(x, np.float64)
    g, u = x64 @ np.asarray(gate, np.float64), x64 @ np.asarray(up, np.float64)
    expected = g / (1 + np.exp(-g)) * u
    for got in (I.paired_swiglu(x, pairs, scale, interpret=True), I.xla_swiglu(x, pairs, scale)):
        np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_kernel_swiglu_declines_what_it_should():
    pairs, scale, _ = quantized_pairs(256, 128)
    x = jnp.ones((1, 32, 256), jnp.float32)
    assert I.kernel_swiglu(x, pairs, scale) is None  # auto: a Hopper GPU and 16 MiB of pairs, not this CPU
    with I.use_kernel("on"):
        assert I.kernel_swiglu(x, pairs, scale).shape == (1, 32, 128)
        assert I.kernel_swiglu(jnp.ones((1, 33, 256)), pairs, scale) is None  # Dream's 33-row window
        assert I.kernel_swiglu(jnp.ones((2, 64, 256)), pairs, scale) is None  # 128 rows: XLA
        small, small_scale, _ = quantized_pairs(64, 128)
        assert I.kernel_swiglu(jnp.ones((1, 32, 64)), small, small_scale) is None  # D not a multiple of 128
    with I.use_kernel("off"):
        assert I.kernel_swiglu(x, pairs, scale) is None
    assert "int8_swiglu=auto" in all_modes()


def test_kernel_derivatives_are_xlas():
    pairs, scale, _ = quantized_pairs(256, 128)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((32, 256)), jnp.float32) * 0.1
    with I.use_kernel("on"):
        grad = jax.grad(lambda x: I.kernel_swiglu(x, pairs, scale).sum())(x)
    expected = jax.grad(lambda x: I.xla_swiglu(x, pairs, scale).sum())(x)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_kernel_lowers_to_one_triton_call_for_a_gpu():
    """Pallas's Triton lowering takes the int16 and / xor / shift and the bitcast to float16, at LLaDA-8B's
    gate|up shape."""
    x = jax.ShapeDtypeStruct((32, 4096), jnp.bfloat16)
    pairs = jax.ShapeDtypeStruct((4096, 12288), jnp.int16)
    scale = jax.ShapeDtypeStruct((2, 12288), jnp.float32)
    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    fn = jax.jit(lambda x, p, s: I.paired_swiglu(x, p, s, interpret=False))
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)):
        text = fn.trace(x, pairs, scale).lower(lowering_platforms=("cuda",)).as_text()
    calls = [line for line in text.splitlines() if "custom_call" in line]
    assert len(calls) == 1 and "__gpu$xla.gpu.triton" in calls[0]
    assert "tensor<2x32x12288xf32>, tensor<2x32x12288xf32>" in calls[0]  # the D splits' gate and up sums


@pytest.fixture(scope="module")
def int8_params():
    return Q.quantize_params(init_params(CONFIG, jax.random.key(0)), "int8")


def test_fusing_int8_weights_pairs_gate_and_up(int8_params):
    fused = fuse_projections(int8_params)
    layer, original = fused.weights["layers"][0], int8_params.weights["layers"][0]
    assert "gate_up" not in layer and layer["gate_up_pairs"].dtype == jnp.int16
    np.testing.assert_array_equal(Q.split_pairs(layer["gate_up_pairs"]),
                                  np.stack([original["gate"], original["up"]], axis=-1))
    np.testing.assert_array_equal(layer["gate_up_pairs_scale"], np.stack([original["gate_scale"],
                                                                          original["up_scale"]]))
    assert Q.mode_of(fused.weights) == "int8"
    assert Q.weight_bytes(fused.weights) == Q.weight_bytes(int8_params.weights)
    assert jax.eval_shape(fuse_projections, int8_params).weights["layers"][0]["gate_up_pairs"].shape == (128, 256)
    fp8 = fuse_projections(Q.quantize_params(init_params(CONFIG, jax.random.key(0)), "fp8"))
    assert "gate_up" in fp8.weights["layers"][0]  # only int8 is paired


def test_forward_and_decode_with_pairs_match_the_unfused_int8_model(int8_params):
    """XLA's path on the pairs computes what the unfused int8 weights do; the kernel (32-row cached steps, in
    Pallas's interpreter) too, up to x's rounding to float16, which leaves the greedy tokens of this model as they
    are."""
    fused = fuse_projections(int8_params)
    tokens = jax.random.randint(jax.random.key(1), (1, 32), 0, CONFIG.vocab_size)
    expected = forward(int8_params, tokens).logits
    np.testing.assert_allclose(forward(fused, tokens).logits, expected, rtol=1e-5, atol=1e-5)
    with I.use_kernel("on"):
        np.testing.assert_allclose(forward(fused, tokens).logits, expected, rtol=1e-2, atol=1e-2)
    strategy = S.Strategy(schedule=S.Schedule(gen_length=64, block_length=32, steps=64), rule=S.LowConfidence(),
                          cache=S.DualCache())
    prompt = jax.random.randint(jax.random.key(2), (1, 16), 0, CONFIG.vocab_size)
    unfused = decode(int8_params, prompt, strategy).tokens
    with I.use_kernel("on"):
        jax.clear_caches()
        paired = decode(fused, prompt, strategy).tokens
    jax.clear_caches()
    np.testing.assert_array_equal(paired, unfused)


def test_no_matmul_kernel_turns_it_off_too():
    from jdlm.cli import build_parser
    from jdlm.cli.common import set_kernel_modes
    from jdlm.kernels import float_linear

    parser = build_parser()
    with float_linear.use_kernel("auto"):
        set_kernel_modes(parser.parse_args(["generate"]))
        assert I.SWITCH.mode == "auto"
        set_kernel_modes(parser.parse_args(["generate", "--no-matmul-kernel"]))
        assert I.SWITCH.mode == "off" and float_linear.SWITCH.mode == "off"
