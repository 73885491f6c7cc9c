"""The weight-only quantised matmul kernels (jdlm/kernels/weight_only_matmul.py), run by Pallas's interpreter on CPU:
against the dequantised matmul (one weight, grouped weights, SwiGLU), their tilings and errors, their lowering for
CUDA, and the model's forward and decode with them (jdlm/kernels/quantized_linear.py) against XLA's quantised path."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdlm import quantize as Q
from jdlm.config import tiny
from jdlm.kernels import quantized_linear as L
from jdlm.kernels import weight_only_matmul as W
from jdlm.model import forward, init_params
from tests.script_module import load_script

LLADA_8B_LINEARS = [(4096, 4096), (4096, 12288), (12288, 4096)]  # (K, N) of q/k/v/o, gate/up, down
DREAM_7B_LINEARS = [(3584, 3584), (3584, 512), (3584, 18944), (18944, 3584)]


def quantized(k: int, n: int, mode: str, seed: int = 0):
    """(w_q [k, n], scale [n]) from a random float weight whose columns have different magnitudes."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)) * rng.uniform(0.05, 2.0, n)
    return Q.quantize_array(jnp.asarray(w, jnp.float32), mode, 1)


def dequantized_matmul(x, w_q, scale):
    """The reference: x @ (w_q * scale) in float64 (numpy)."""
    return np.asarray(x, np.float64) @ (np.asarray(w_q.astype(jnp.float32), np.float64) * np.asarray(scale))


CASES = [  # (M, K, N, tiling fields beyond the default)
    (1, 64, 32, {}),
    (20, 256, 128, {}),  # M not a multiple of 16: x padded to 32 rows
    (33, 128, 64, {"block_m": 16}),  # three row blocks
    (16, 512, 64, {"splits": 4, "block_k": 32}),  # split-K: four float32 partial sums added afterwards
    (24, 384, 96, {"splits": 3, "block_k": 64, "block_n": 32}),  # K / block_k = 6 split 3 ways, N = 3 tiles
    (20, 256, 128, {"swap_ab": True, "splits": 2, "block_k": 64, "block_n": 64}),  # w^T x^T
    (40, 128, 64, {"swap_ab": True, "block_m": 16}),
]


@pytest.mark.parametrize("mode", ["int8", "fp8"])
@pytest.mark.parametrize("m,k,n,fields", CASES, ids=[f"M{m}-K{k}-N{n}-{'-'.join(f'{a}{b}' for a, b in f.items())}"
                                                      for m, k, n, f in CASES])
def test_kernel_matches_the_dequantized_matmul(mode, m, k, n, fields):
    w_q, scale = quantized(k, n, mode)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((m, k)), jnp.float32)
    y = W.weight_only_matmul(x, w_q, scale, interpret=True, **fields)
    assert y.shape == (m, n) and y.dtype == jnp.float32
    reference = dequantized_matmul(x, w_q, scale)
    np.testing.assert_allclose(np.asarray(y), reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def test_bfloat16_rows_give_bfloat16_out_accumulated_in_float32():
    """512 bf16 products summed: accumulating in bf16 would drift by ~1e-2 relative; float32 accumulation leaves
    only the final rounding to bf16 (2^-8 relative)."""
    w_q, scale = quantized(512, 64, "int8")
    x = jnp.asarray(np.random.default_rng(2).standard_normal((8, 512)), jnp.bfloat16)
    y = W.weight_only_matmul(x, w_q, scale, interpret=True, splits=2, block_k=64)
    assert y.dtype == jnp.bfloat16
    reference = dequantized_matmul(x.astype(jnp.float32), w_q, scale)
    np.testing.assert_allclose(np.asarray(y, np.float64), reference, rtol=2 ** -8,
                               atol=2 ** -8 * np.abs(reference).max())


@pytest.mark.parametrize("mode", ["int8", "fp8"])
@pytest.mark.parametrize("swap_ab", [False, True])
def test_kernel_lowers_to_one_triton_call_for_a_gpu(mode, swap_ab):
    """Lowered for CUDA on this CPU-only machine: Pallas's Triton lowering accepts the kernel at LLaDA-8B's
    q-projection shape (every op, tile shape and dtype conversion), with the tiling's grid, warps and stages."""
    x = jax.ShapeDtypeStruct((20, 4096), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((4096, 4096), Q.MODES[mode][0])
    scale = jax.ShapeDtypeStruct((4096,), jnp.float32)
    tiling = W.Tiling(block_m=32, block_n=64, block_k=128, splits=2, num_warps=8, num_stages=3, swap_ab=swap_ab)
    fn = jax.jit(lambda x, w, s: W.weight_only_matmul(x, w, s, tiling=tiling, interpret=False))
    # jax 0.11 asks which GPU it lowers for (its compute capability) of an abstract device; 0.10 assumes the newest.
    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)):
        text = fn.trace(x, w, scale).lower(lowering_platforms=("cuda",)).as_text()
    calls = [line for line in text.splitlines() if "custom_call" in line]
    assert len(calls) == 1 and "__gpu$xla.gpu.triton" in calls[0]
    for attribute in ("grid_x = 1 ", "grid_y = 64 ", "grid_z = 2 ", "num_warps = 8 ", "num_stages = 3 "):
        assert attribute in calls[0]


GROUPED_TILINGS = [{}, {"splits": 2, "block_k": 64}, {"swap_ab": True, "block_m": 16}]


@pytest.mark.parametrize("mode", ["int8", "fp8"])
@pytest.mark.parametrize("fields", GROUPED_TILINGS, ids=["default", "split", "swap_ab"])
def test_grouped_kernel_matches_each_dequantized_matmul(mode, fields):
    """A q|k|v-like group (widths 96, 64, 64: 3, 2 and 2 column tiles of 32): one launch whose programs run over
    every weight's column tiles."""
    weights = [quantized(256, n, mode, seed=n) for n in (96, 64, 64)]
    x = jnp.asarray(np.random.default_rng(7).standard_normal((20, 256)), jnp.float32)
    outs = W.grouped_weight_only_matmul(x, [w for w, _ in weights], [s for _, s in weights], interpret=True,
                                        **fields)
    assert [y.shape for y in outs] == [(20, 96), (20, 64), (20, 64)]
    for y, (w_q, scale) in zip(outs, weights):
        reference = dequantized_matmul(x, w_q, scale)
        np.testing.assert_allclose(np.asarray(y), reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize("mode", ["int8", "fp8"])
@pytest.mark.parametrize("fields", [{}, {"block_n": 32, "block_k": 32}, {"swap_ab": True, "block_m": 16}],
                         ids=["default", "small-tiles", "swap_ab"])
def test_swiglu_kernel_matches_silu_gate_times_up(mode, fields):
    (gate, gate_scale), (up, up_scale) = quantized(256, 64, mode, seed=1), quantized(256, 64, mode, seed=2)
    x = jnp.asarray(np.random.default_rng(8).standard_normal((20, 256)) / 16, jnp.float32)
    y = W.swiglu_weight_only_matmul(x, gate, up, gate_scale, up_scale, interpret=True, **fields)
    g, u = dequantized_matmul(x, gate, gate_scale), dequantized_matmul(x, up, up_scale)
    reference = g / (1 + np.exp(-g)) * u
    np.testing.assert_allclose(np.asarray(y), reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())
    with pytest.raises(ValueError, match="splits=1"):
        W.swiglu_weight_only_matmul(x, gate, up, gate_scale, up_scale, interpret=True, splits=2)


def test_grouped_and_swiglu_kernels_lower_for_a_gpu():
    """One Triton call each for LLaDA-8B's q|k|v (3 outputs, 3 x 32 column tiles of 128) and gate|up."""
    x = jax.ShapeDtypeStruct((32, 4096), jnp.bfloat16)
    w, scale = jax.ShapeDtypeStruct((4096, 4096), jnp.int8), jax.ShapeDtypeStruct((4096,), jnp.float32)
    wide, wide_scale = jax.ShapeDtypeStruct((4096, 12288), jnp.int8), jax.ShapeDtypeStruct((12288,), jnp.float32)
    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    tiling = W.Tiling(block_m=32, block_n=128, block_k=128)
    grouped = jax.jit(lambda x, *a: W.grouped_weight_only_matmul(x, a[:3], a[3:], tiling=tiling, interpret=False))
    swiglu = jax.jit(lambda x, *a: W.swiglu_weight_only_matmul(x, *a, tiling=tiling, interpret=False))
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)):
        texts = [grouped.trace(x, w, w, w, scale, scale, scale).lower(lowering_platforms=("cuda",)).as_text(),
                 swiglu.trace(x, wide, wide, wide_scale, wide_scale).lower(lowering_platforms=("cuda",)).as_text()]
    for text, columns in zip(texts, (96, 96)):
        calls = [line for line in text.splitlines() if "custom_call" in line]
        assert len(calls) == 1 and "__gpu$xla.gpu.triton" in calls[0] and f"grid_y = {columns} " in calls[0]


@pytest.mark.parametrize("fields,message", [
    ({"block_k": 48}, "power of two"),
    ({"block_k": 8}, "power of two"),
    ({"block_k": 128, "splits": 2}, "K=192 is not a multiple of splits"),
    ({"block_n": 128}, "N=96 is not a multiple of block_n"),
])
def test_tilings_that_do_not_divide_the_shapes_are_refused(fields, message):
    w_q, scale = quantized(192, 96, "int8")
    x = jnp.ones((4, 192), jnp.float32)
    with pytest.raises(ValueError, match=message):
        W.weight_only_matmul(x, w_q, scale, interpret=True, **fields)


def test_shapes_without_a_tile_and_float_weights_are_refused():
    x = jnp.ones((4, 40), jnp.float32)
    w_q, scale = quantized(40, 64, "int8")
    assert W.default_tiling(4, 40, 64) is None  # K = 40: no power-of-two tile >= 16 divides it
    with pytest.raises(ValueError, match="no power-of-two tile"):
        W.weight_only_matmul(x, w_q, scale, interpret=True)
    with pytest.raises(ValueError, match="int8 or float8_e4m3fn"):
        W.weight_only_matmul(x, w_q.astype(jnp.float32), scale, interpret=True)
    with pytest.raises(ValueError, match=r"want x \[M, K\]"):
        W.weight_only_matmul(x[:, :32], w_q, scale, interpret=True)


@pytest.mark.parametrize("m", [1, 32, 200, 256])
@pytest.mark.parametrize("k,n", LLADA_8B_LINEARS + DREAM_7B_LINEARS)
def test_model_tiling_divides_the_8b_shapes(m, k, n):
    tiling = W.model_tiling(m, k, n, num_sms=132)
    tiling.check(m, k, n)
    rows = tiling.padded_rows(m)
    assert 16 <= rows < m + tiling.block_m


@pytest.mark.parametrize("m", [1, 32, 256])
@pytest.mark.parametrize("k,n", LLADA_8B_LINEARS)
def test_model_tiling_keeps_an_h100_busy_at_llada_shapes(m, k, n):
    """At least 90% of an H100's 132 SMs get a program, and the float32 partial sums move at most a quarter of the
    weight bytes (else split-K costs more than it wins)."""
    tiling = W.model_tiling(m, k, n, num_sms=132)
    rows = tiling.padded_rows(m)
    programs = rows // tiling.block_m * n // tiling.block_n * tiling.splits
    assert programs >= 0.9 * 132
    partial_bytes = 0 if tiling.splits == 1 else 2 * tiling.splits * rows * n * 4
    assert partial_bytes <= k * n / 4


def test_default_tiling_takes_a_measured_tiling_from_the_table(tmp_path, monkeypatch):
    measured = W.Tiling(block_m=32, block_n=128, block_k=256, splits=4, num_warps=8, num_stages=3, swap_ab=True)
    odd = W.Tiling(block_m=16, block_n=64, block_k=128, splits=3)  # 3 splits of 128 do not divide K = 4096
    table = {jax.devices()[0].device_kind: {"32,4096,4096": dataclasses.asdict(measured),
                                            "16,4096,4096": dataclasses.asdict(odd)},
             "another GPU": {"32,4096,12288": dataclasses.asdict(measured)}}
    path = tmp_path / "tilings.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(W.TILINGS_ENV, str(path))
    assert W.default_tiling(20, 4096, 4096) == measured  # 20 rows round up to the key's 32
    assert W.default_tiling(8, 4096, 4096) == W.model_tiling(8, 4096, 4096)  # an entry that does not divide K
    assert W.default_tiling(32, 4096, 12288) == W.model_tiling(32, 4096, 12288)  # measured on another device
    assert W.default_tiling(64, 4096, 4096) == W.model_tiling(64, 4096, 4096)  # a shape not in the table


# ---------------------------------------------------------------- in the model


@pytest.fixture(autouse=True)
def kernel_mode_restored():
    with L.use_kernel("auto"):  # each test starts in "auto" and leaves the mode as it found it
        yield


def test_kernel_einsum_takes_the_model_specs_and_declines_the_rest():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 5, 4, 16)), jnp.float32)  # [B, T, N, H]
    w_q, scale = Q.quantize_array(jnp.asarray(rng.standard_normal((4, 16, 32)), jnp.float32), "int8", 2)  # o
    reference = jnp.einsum("BTNH,NHD->BTD", x, Q.dequantize_array(w_q, scale))
    with L.use_kernel("on"):
        y = L.kernel_einsum("BTNH,NHD->BTD", x, w_q, scale)
        np.testing.assert_allclose(np.asarray(y), np.asarray(reference), rtol=1e-5, atol=1e-5)
        assert L.kernel_einsum("BTHN,NHD->BTD", x, w_q, scale) is None  # contracted axes out of order
        assert L.kernel_einsum("BTNH,NHD->TBD", x, w_q, scale) is None  # output axes permuted
        big = jnp.zeros((1, L.MAX_ROWS + 1, 4, 16), jnp.float32)
        assert L.kernel_einsum("BTNH,NHD->BTD", big, w_q, scale) is None  # a prefill: XLA's GEMM
    with L.use_kernel("off"):
        assert L.kernel_einsum("BTNH,NHD->BTD", x, w_q, scale) is None
    assert L.kernel_einsum("BTNH,NHD->BTD", x, w_q, scale) is None  # auto: only on a GPU
    with pytest.raises(ValueError, match="unknown kernel mode"):
        L.set_mode("always")


def _config(family: str):
    if family == "dream":  # q/k/v biases, grouped-query heads (k/v: 2 heads of 16 = 32 columns), shifted logits
        return tiny(family="dream", n_kv_heads=2, qkv_bias=True, logits_shift=True)
    return tiny()


@pytest.fixture(scope="module", params=["llada", "dream"])
def tiny_params(request):
    return init_params(_config(request.param), jax.random.key(4), jnp.float32, std=0.1)


def _logits(params, tokens, mode: str):
    """Forward logits with the kernel `mode`, traced afresh (the mode is read at trace time), and its jaxpr."""
    with L.use_kernel(mode):
        fn = jax.jit(lambda p, t: forward(p, t).logits)
        return np.asarray(fn(params, tokens)), str(jax.make_jaxpr(fn)(params, tokens))


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_forward_with_the_kernel_matches_the_xla_quantized_path(tiny_params, mode):
    params = Q.quantize_params(tiny_params, mode)
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 250, (2, 12)), jnp.int32)  # 24 rows
    with_kernel, jaxpr_on = _logits(params, tokens, "on")
    xla, jaxpr_off = _logits(params, tokens, "off")
    assert jaxpr_on.count("pallas_call") == 7 * params.config.n_layers and "pallas_call" not in jaxpr_off
    np.testing.assert_allclose(with_kernel, xla, rtol=1e-4, atol=1e-4 * np.abs(xla).max())
    assert np.abs(xla).max() > 1  # logits of substance, not a trivially small comparison


def test_fused_forward_runs_four_kernel_calls_a_layer_and_matches_xla(tiny_params):
    """Mode "fused": q|k|v in one call, gate|up with the SwiGLU in another, o and down one each."""
    params = Q.quantize_params(tiny_params, "int8")
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 250, (2, 12)), jnp.int32)
    fused, jaxpr = _logits(params, tokens, "fused")
    xla, _ = _logits(params, tokens, "off")
    assert jaxpr.count("pallas_call") == 4 * params.config.n_layers
    np.testing.assert_allclose(fused, xla, rtol=1e-4, atol=1e-4 * np.abs(xla).max())


def test_fused_calls_only_in_fused_mode_and_for_quantized_weights():
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.standard_normal((1, 4, 64)), jnp.float32)
    gate, gate_scale = quantized(64, 32, "int8", seed=3)
    up, up_scale = quantized(64, 32, "int8", seed=4)
    with L.use_kernel("on"):  # one call per weight only
        assert L.kernel_projections(x, [gate, up], [gate_scale, up_scale]) is None
        assert L.kernel_swiglu(x, gate, up, gate_scale, up_scale) is None
    with L.use_kernel("fused"):
        q, k = L.kernel_projections(x, [gate, up.reshape(64, 2, 16)], [gate_scale, up_scale.reshape(2, 16)])
        assert q.shape == (1, 4, 32) and k.shape == (1, 4, 2, 16)
        assert L.kernel_swiglu(x, gate, up, gate_scale, up_scale).shape == (1, 4, 32)
        float_gate = Q.dequantize_array(gate, gate_scale)
        assert L.kernel_swiglu(x, float_gate, float_gate, None, None) is None
        assert L.kernel_projections(x, [float_gate], [None]) is None
        big = jnp.zeros((1, L.MAX_ROWS + 1, 64), jnp.float32)
        assert L.kernel_swiglu(big, gate, up, gate_scale, up_scale) is None


def test_float_weights_never_reach_the_kernel(tiny_params):
    tokens = jnp.zeros((1, 8), jnp.int32)
    off, jaxpr_off = _logits(tiny_params, tokens, "off")
    for mode in ("on", "fused"):
        on, jaxpr_on = _logits(tiny_params, tokens, mode)
        assert jaxpr_on == jaxpr_off and "pallas_call" not in jaxpr_on
        np.testing.assert_array_equal(on, off)


def test_dual_cache_decode_with_the_kernel_gives_xla_s_tokens():
    """The whole decode loop (dual cache: 8-row cached steps, full forwards of the prompt and block) with the kernels
    in every quantised matmul (one per weight, or fused) writes the tokens XLA's quantised matmuls write (Dream's
    layout: biases, grouped kv heads, shifted logits)."""
    import jdlm
    from jdlm import strategies as S
    from jdlm.decoding import loop

    params = Q.quantize_params(init_params(_config("dream"), jax.random.key(4), jnp.float32, std=0.1), "int8")
    prompt = jnp.asarray(np.random.default_rng(6).integers(3, 240, (2, 11)), jnp.int32)
    strategy = S.parse_strategy("low_confidence dual gen_length=16 block_length=8 steps=16")
    tokens = {}
    for mode in ("off", "on", "fused"):
        loop._decode_loop.clear_cache()  # the kernel mode is read when the loop is traced
        with L.use_kernel(mode):
            tokens[mode] = np.asarray(jdlm.decode(params, prompt, strategy).tokens)
            traced = loop._decode_loop.trace(*loop._arguments(params, prompt, strategy, None, None))
            assert ("pallas_call" in str(traced.jaxpr)) == (mode != "off")
    loop._decode_loop.clear_cache()
    np.testing.assert_array_equal(tokens["on"], tokens["off"])
    np.testing.assert_array_equal(tokens["fused"], tokens["off"])
    assert len(np.unique(tokens["on"][:, -16:])) > 2  # a decode of varied tokens, not one repeated id


# ---------------------------------------------------------------- scripts/bench_matmul_forms.py's int8 forms


@pytest.mark.parametrize("kind", ["pairs", "int8x8"])
def test_bench_matmul_forms_int8_kernels_compute_the_quantised_matmul(kind):
    """pairs_T: x @ (w_q * scale) with x in float16 (here x holds float16 values, so only summation order differs);
    int8x8_T: within the rows' int8 rounding (half a step of each row's largest |x| / 127 per product)."""
    forms = load_script("bench_matmul_forms")
    prepare, fn = forms.forms(jnp.float32, ["16,32,64,2,4,4"])[f"{kind}_16_32_64_2_4_4"]
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.standard_normal((256, 128)) * rng.uniform(0.05, 2.0, 128), jnp.float32)
    x = jnp.asarray(rng.standard_normal((16, 256)), jnp.float16).astype(jnp.float32)
    w_p, s = prepare(w)
    w_q, scale = Q.quantize_array(w, "int8", 1)
    reference = dequantized_matmul(x, w_q, scale)
    tolerance = 1e-5 if kind == "pairs" else 0.5 / 127 * np.abs(np.asarray(x)).max() * np.abs(
        np.asarray(w_q.astype(jnp.float32)) * np.asarray(scale)).sum(0).max()
    np.testing.assert_allclose(np.asarray(fn(x, w_p, s), np.float64), reference, atol=tolerance,
                               rtol=1e-5 if kind == "pairs" else 0)


def test_bench_matmul_forms_int8_kernels_lower_for_a_gpu():
    """Pallas's Triton lowering takes the word arithmetic (int16 and / xor / shift, bitcast to float16) and the int8
    x int8 -> int32 dot, at LLaDA-8B's q|k|v shape."""
    forms = load_script("bench_matmul_forms")
    spec = "32,64,128,2,4,4"
    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    x = jax.ShapeDtypeStruct((32, 4096), jnp.bfloat16)
    cases = {"pairs": (jax.ShapeDtypeStruct((4096, 6144), jnp.int16), jax.ShapeDtypeStruct((2, 6144), jnp.float32),
                       "tensor<2x32x6144xf32>, tensor<2x32x6144xf32>"),  # the K splits' low and high halves
             "int8x8": (jax.ShapeDtypeStruct((4096, 12288), jnp.int8), jax.ShapeDtypeStruct((12288,), jnp.float32),
                        "tensor<2x32x12288xf32>")}
    for kind, (w, s, outputs) in cases.items():
        _, fn = forms.int8_kernel_form(spec, interpret=False, pairs=kind == "pairs")
        with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)):
            text = jax.jit(fn).trace(x, w, s).lower(lowering_platforms=("cuda",)).as_text()
        calls = [line for line in text.splitlines() if "custom_call" in line]
        assert len(calls) == 1 and "__gpu$xla.gpu.triton" in calls[0] and outputs in calls[0], kind
