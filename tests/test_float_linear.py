"""The Pallas matmul kernel on float weights (jdlm/kernels/weight_only_matmul.py, `scale=None`) and when the model
uses it (jdlm/kernels/float_linear.py): against XLA's matmul in Pallas's interpreter on CPU, the stacked SwiGLU for
float and int8 weights, the tiling rule at 8B shapes, the lowering for CUDA, and the forward and a decode with it."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdlm import quantize as Q
from jdlm.config import tiny
from jdlm.kernels import float_linear as F
from jdlm.kernels import quantized_linear as L
from jdlm.kernels import weight_only_matmul as W
from jdlm.model import forward, fuse_projections, init_params
from tests.script_module import load_script

LLADA_8B = {"q|k|v": (4096, 12288), "o": (4096, 4096), "gate": (4096, 12288), "down": (12288, 4096)}
DREAM_7B = {"q|k|v": (3584, 4608), "o": (3584, 3584), "gate": (3584, 18944), "down": (18944, 3584)}


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _close(actual, expected):
    expected = np.asarray(expected, np.float64)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("m,k,n,fields", [
    (8, 256, 128, {}),
    (20, 256, 192, {"block_n": 64, "block_k": 32}),
    (5, 512, 64, {"splits": 4, "block_k": 64}),  # K split over 4 programs, float32 partials added
    (16, 128, 96, {"block_n": 32, "swap_ab": True}),
])
def test_float_weights_give_x_at_w(m, k, n, fields):
    x, w = _random((m, k), 1), _random((k, n), 2)
    _close(W.weight_only_matmul(x, w, None, interpret=True, **fields), x @ w)


def test_grouped_and_swiglu_take_float_weights_without_scales():
    x, ws = _random((20, 128), 13), [_random((128, n), 14 + n) for n in (64, 32, 32)]
    for y, w in zip(W.grouped_weight_only_matmul(x, ws, [None] * 3, interpret=True, block_n=32), ws, strict=True):
        _close(y, x @ w)
    gate, up = ws[1], ws[2]
    _close(W.swiglu_weight_only_matmul(x, gate, up, None, None, interpret=True),
           jax.nn.silu(x @ gate) * (x @ up))


def test_bfloat16_weights_accumulate_in_float32():
    """512 bf16 products a sum: only the final rounding to bf16 (2^-8 relative), not a bf16 running sum."""
    x, w = _random((8, 512), 3).astype(jnp.bfloat16), _random((512, 64), 4).astype(jnp.bfloat16)
    y = W.weight_only_matmul(x, w, None, interpret=True, block_k=64)
    reference = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float64), reference, rtol=2 ** -8,
                               atol=2 ** -8 * np.abs(reference).max())


@pytest.mark.parametrize("fields", [{"block_n": 32}, {"block_n": 32, "swap_ab": True}])
def test_stacked_swiglu_reads_gate_and_up_from_one_weight(fields):
    """up's column tiles (and scales) start F / block_n tiles into the stacked weight; the output's do not."""
    x = _random((12, 128), 5)
    gate_up = _random((128, 2, 96), 6)  # as fuse_projections stores it: gate, then up
    reference = jax.nn.silu(x @ gate_up[:, 0]) * (x @ gate_up[:, 1])
    _close(W.stacked_swiglu_matmul(x, gate_up, interpret=True, **fields), reference)
    w_q, scale = Q.quantize_array(gate_up, "int8", 1)  # scale [2, 96]
    dequantized = Q.dequantize_array(w_q, scale)
    reference = jax.nn.silu(x @ dequantized[:, 0]) * (x @ dequantized[:, 1])
    _close(W.stacked_swiglu_matmul(x, w_q, scale, interpret=True, **fields), reference)


def test_mismatched_operands_are_refused():
    x = jnp.ones((4, 64), jnp.float32)
    with pytest.raises(ValueError, match="must have x's dtype"):
        W.weight_only_matmul(x, jnp.ones((64, 64), jnp.bfloat16), None, interpret=True)
    w_q, scale = Q.quantize_array(_random((64, 64), 7), "int8", 1)
    with pytest.raises(ValueError, match="not a mix"):
        W.grouped_weight_only_matmul(x, [w_q, jnp.ones((64, 64))], [scale, None], interpret=True)
    with pytest.raises(ValueError, match=r"\[K, 2, F\]"):
        W.stacked_swiglu_matmul(x, jnp.ones((64, 128)), interpret=True)
    with pytest.raises(ValueError, match="splits=1"):
        W.stacked_swiglu_matmul(x, jnp.ones((64, 2, 64)), interpret=True, splits=2, block_k=16)
    w_q, scale = Q.quantize_array(_random((64, 2, 32), 7), "int8", 1)
    for wrong in (jnp.concatenate([scale, scale]), scale.reshape(-1)):  # [4, F] and [2F] instead of [2, F]
        with pytest.raises(ValueError, match=r"scale must be \[2, F\]"):
            W.stacked_swiglu_matmul(x, w_q, wrong, interpret=True)


@pytest.mark.parametrize("rows", [1, 32, 64])
@pytest.mark.parametrize("name,k,n", [(f"llada {a}", *s) for a, s in LLADA_8B.items()]
                         + [(f"dream {a}", *s) for a, s in DREAM_7B.items()])
def test_float_tiling_divides_the_8b_shapes_and_keeps_half_an_h100_busy(rows, name, k, n):
    for splits in (True, False):
        tiling = W.float_tiling(rows, k, n, num_sms=132, splits=splits)
        tiling.check(rows, k, n)
        programs = -(-rows // tiling.block_m) * (n // tiling.block_n) * tiling.splits
        assert programs >= 66 if splits else tiling.splits == 1  # the SwiGLU kernel needs whole K sums


def test_float_tiling_is_the_measured_one_at_llada_shapes():
    """The tilings measured fastest on an H100 at 32 rows (docs/performance.md): q|k|v and gate 128-column tiles
    unsplit, down 64-column tiles with K split in two."""
    assert W.float_tiling(32, 4096, 12288, num_sms=132) == W.Tiling(block_m=32, block_n=128, block_k=64)
    assert W.float_tiling(32, 12288, 4096, num_sms=132) == W.Tiling(block_m=32, block_n=64, block_k=128, splits=2)


def test_float_kernels_lower_to_one_triton_call_each_for_a_gpu():
    """Lowered for CUDA on this CPU-only machine at LLaDA-8B's down and gate|up shapes."""
    x = jax.ShapeDtypeStruct((32, 4096), jnp.bfloat16)
    wide = jax.ShapeDtypeStruct((32, 12288), jnp.bfloat16)
    down = jax.ShapeDtypeStruct((12288, 4096), jnp.bfloat16)
    gate_up = jax.ShapeDtypeStruct((4096, 2, 12288), jnp.bfloat16)
    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
    matmul = jax.jit(lambda x, w: W.weight_only_matmul(x, w, None, interpret=False))
    swiglu = jax.jit(lambda x, w: W.stacked_swiglu_matmul(x, w, interpret=False))
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)):
        texts = [matmul.trace(wide, down).lower(lowering_platforms=("cuda",)).as_text(),
                 swiglu.trace(x, gate_up).lower(lowering_platforms=("cuda",)).as_text()]
    for text, grid in zip(texts, ("grid_y = 64 ", "grid_y = 96 ")):
        calls = [line for line in text.splitlines() if "custom_call" in line]
        assert len(calls) == 1 and "__gpu$xla.gpu.triton" in calls[0] and grid in calls[0]


def test_bench_matmul_forms_times_the_kernel_as_the_model_runs_it():
    """scripts/bench_matmul_forms.py --pallas: the float weight without a scale (x and w in, no scale read and
    multiplied in the kernel), the product x @ w."""
    script = load_script("bench_matmul_forms")
    prepare, fn = script.forms(jnp.float32, ["32,64,64,1,4,4"])["pallas_32_64_64_1_4_4"]
    x = _random((32, 128), 20)
    w, s = prepare(_random((128, 128), 21))
    _close(fn(x, w, s), x @ w)
    (call,) = [e for e in jax.make_jaxpr(fn)(x, w, s).eqns if e.primitive.name == "pallas_call"]
    assert len(call.invars) == 2


# ---------------------------------------------------------------- in the model


@pytest.fixture(autouse=True)
def kernel_modes_restored():
    with F.use_kernel("auto"), L.use_kernel("auto"):
        yield


def test_kernel_einsum_declines_what_it_should():
    x, w = _random((1, 16, 64), 8), _random((64, 32), 9)
    assert F.kernel_einsum("BTD,DF->BTF", x, w) is None  # auto: a Hopper GPU only, not this CPU
    with F.use_kernel("on"):
        _close(F.kernel_einsum("BTD,DF->BTF", x, w), x @ w)
        assert F.kernel_einsum("BTD,DF->BTF", x, w.astype(jnp.bfloat16)) is None  # dtypes differ
        assert F.kernel_einsum("BTD,DF->TBF", x, w) is None  # output axes permuted
        assert F.kernel_einsum("BTD,DF->BTF", jnp.zeros((1, F.MAX_ROWS + 1, 64)), w) is None  # a full forward
        assert F.kernel_einsum("BTD,DF->BTF", jnp.zeros((1, 33, 64)), w) is None  # Dream's window: a padded tile
        assert F.kernel_swiglu(jnp.zeros((1, 33, 64)), jnp.zeros((64, 2, 32))) is None
        assert F.kernel_swiglu(jnp.zeros((1, F.MAX_ROWS + 1, 64)), jnp.zeros((64, 2, 32))) is None
    with F.use_kernel("off"):
        assert F.kernel_einsum("BTD,DF->BTF", x, w) is None
    with pytest.raises(ValueError, match="unknown float matmul kernel mode"):
        F.set_mode("always")


def test_the_kernels_are_differentiable_with_xla_s_derivatives():
    """A pallas_call has no transpose rule: without derivatives of their own, jax.grad of a forward that took the
    kernels (a short batch on a Hopper GPU) would fail. Forward and reverse mode give XLA's derivatives, and the
    evaluated function still runs the kernels."""
    x, w, gate_up = _random((2, 16, 64), 10), _random((64, 32), 11), _random((64, 2, 32), 12)

    def loss(x, w, gate_up, kernel: bool):
        if kernel:
            y, h = F.kernel_einsum("BTD,DF->BTF", x, w), F.kernel_swiglu(x, gate_up)
        else:
            y, h = x @ w, jax.nn.silu(x @ gate_up[:, 0]) * (x @ gate_up[:, 1])
        return (y * y).sum() + (h * jnp.cos(h)).sum()

    with F.use_kernel("on"):
        assert str(jax.make_jaxpr(loss, static_argnums=3)(x, w, gate_up, True)).count("pallas_call") == 2
        grads = jax.grad(loss, argnums=(0, 1, 2))(x, w, gate_up, True)
        _, tangent = jax.jvp(lambda *a: loss(*a, True), (x, w, gate_up), (x, w, gate_up))
    expected = jax.grad(loss, argnums=(0, 1, 2))(x, w, gate_up, False)
    for actual, reference in zip(grads, expected, strict=True):
        _close(actual, reference)
    _close(tangent, jax.jvp(lambda *a: loss(*a, False), (x, w, gate_up), (x, w, gate_up))[1])


@pytest.fixture(scope="module", params=["llada", "dream"])
def fused_params(request):
    config = tiny() if request.param == "llada" else tiny(family="dream", n_kv_heads=2, qkv_bias=True,
                                                          logits_shift=True)
    return fuse_projections(init_params(config, jax.random.key(4), jnp.float32, std=0.1))


def _logits(params, tokens, float_mode: str, quantized_mode: str = "auto"):
    """Forward logits under the kernels' modes, traced afresh (modes are read at trace time), and the jaxpr."""
    with F.use_kernel(float_mode), L.use_kernel(quantized_mode):
        fn = jax.jit(lambda p, t: forward(p, t).logits)
        return np.asarray(fn(params, tokens)), str(jax.make_jaxpr(fn)(params, tokens))


def test_fused_forward_runs_four_float_kernels_a_layer_and_matches_xla(fused_params):
    """q|k|v, o, gate|up with the SwiGLU, down: four calls a layer; the same logits as XLA's."""
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 250, (2, 16)), jnp.int32)  # 32 rows
    on, jaxpr_on = _logits(fused_params, tokens, "on")
    off, jaxpr_off = _logits(fused_params, tokens, "off")
    assert jaxpr_on.count("pallas_call") == 4 * fused_params.config.n_layers and "pallas_call" not in jaxpr_off
    np.testing.assert_allclose(on, off, rtol=1e-4, atol=1e-4 * np.abs(off).max())
    assert np.abs(off).max() > 1


def test_dual_cache_decode_with_the_float_kernel_gives_xla_s_tokens():
    """The decode loop with the kernel in every cached step's float matmul (full forwards stay with XLA) writes the
    tokens XLA's matmuls write."""
    import jdlm
    from jdlm import strategies as S
    from jdlm.decoding import loop

    params = fuse_projections(init_params(tiny(), jax.random.key(7), jnp.float32, std=0.1))
    prompt = jnp.asarray(np.random.default_rng(6).integers(3, 240, (2, 40)), jnp.int32)  # full forwards: 112 rows
    strategy = S.parse_strategy("low_confidence dual gen_length=16 block_length=8 steps=16")
    tokens = {}
    for mode in ("off", "on"):
        loop._decode_loop.clear_cache()  # the mode is read when the loop is traced
        with F.use_kernel(mode):
            tokens[mode] = np.asarray(jdlm.decode(params, prompt, strategy).tokens)
            traced = loop._decode_loop.trace(*loop._arguments(params, prompt, strategy, None, None))
            assert ("pallas_call" in str(traced.jaxpr)) == (mode == "on")
    loop._decode_loop.clear_cache()
    np.testing.assert_array_equal(tokens["on"], tokens["off"])
    assert len(np.unique(tokens["on"][:, -16:])) > 2


def test_auto_takes_the_kernel_on_hopper_for_large_weights_only(monkeypatch):
    """Measured faster on an H100 at 8B shapes; "auto" on a (faked) single GPU runs it where the compute capability
    is 9.0 or more, not on an Ampere (8.0) one, where it was not measured, and only for weights of at least
    MIN_AUTO_WEIGHT_BYTES (a small model's launch-bound matmuls stay with XLA), in 2-byte dtypes (as measured)."""
    from jdlm.kernels import switch

    x, w = _random((1, 16, 64), 8).astype(jnp.bfloat16), _random((64, 32), 9).astype(jnp.bfloat16)
    real = switch.KernelSwitch.auto_applies

    def on_a_gpu(min_capability=switch.MIN_CAPABILITY):  # the real rule, the backend faked (the kernel interprets)
        with monkeypatch.context() as patch:
            patch.setattr(jax, "default_backend", lambda: "gpu")
            return real(min_capability)

    monkeypatch.setattr(F.SWITCH, "auto_applies", on_a_gpu)
    monkeypatch.setattr(F, "MIN_AUTO_WEIGHT_BYTES", w.nbytes)
    for capability, expected in (((9, 0), True), ((8, 0), False), (None, False)):
        monkeypatch.setattr(switch, "compute_capability", lambda device, c=capability: c)
        assert (F.kernel_einsum("BTD,DF->BTF", x, w) is not None) == expected
    monkeypatch.setattr(switch, "compute_capability", lambda device: (9, 0))
    monkeypatch.setattr(F, "MIN_AUTO_WEIGHT_BYTES", w.nbytes + 1)
    assert F.kernel_einsum("BTD,DF->BTF", x, w) is None
    assert F.kernel_swiglu(x, jnp.zeros((64, 2, 8), jnp.bfloat16)) is None  # 2 KiB, under the minimum
    monkeypatch.setattr(F, "MIN_AUTO_WEIGHT_BYTES", 0)
    assert F.kernel_einsum("BTD,DF->BTF", x, w) is not None
    assert F.kernel_einsum("BTD,DF->BTF", x.astype(jnp.float32), w.astype(jnp.float32)) is None  # float32: XLA


def test_auto_stays_off_under_a_multi_device_mesh(monkeypatch):
    """A pallas_call has no partitioning rule: under a mesh of several devices XLA would gather sharded weights onto
    each, so "auto" leaves a sharded decode (traced under its mesh, `jdlm.sharding.active`) to XLA."""
    from jdlm.kernels import switch

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(switch, "compute_capability", lambda device: (9, 0))
    weight = jax.ShapeDtypeStruct((F.MIN_AUTO_WEIGHT_BYTES // 2,), jnp.bfloat16)  # exactly the minimum
    smaller = jax.ShapeDtypeStruct((F.MIN_AUTO_WEIGHT_BYTES // 2 - 1,), jnp.bfloat16)
    assert F._enabled(weight) and not F._enabled(smaller)
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((2,), ("model",))):
        assert not F._enabled(weight)
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("model",))):
        assert F._enabled(weight)


def test_8b_cached_steps_take_the_kernel_and_full_forwards_do_not():
    """At LLaDA-8B's shapes (parameters as shapes only), prompt 256 and 256 tokens in blocks of 32, the decode's
    cached step (32 rows) runs its seven linears a layer through the kernel; the full forwards (512 rows) through
    XLA."""
    from jdlm import strategies as S
    from jdlm.config import llada_8b
    from jdlm.decoding import loop
    from jdlm.model import param_shapes

    params = param_shapes(llada_8b())
    strategy = S.parse_strategy("low_confidence dual gen_length=256 block_length=32 steps=256")
    arguments = loop._arguments(params, np.zeros((1, 256), np.int32), strategy, None, None)
    for mode, calls in (("off", 0), ("on", 7 * 32)):
        loop._decode_loop.clear_cache()
        with F.use_kernel(mode):
            assert str(loop._decode_loop.trace(*arguments).jaxpr).count("pallas_call") == calls
    loop._decode_loop.clear_cache()


def test_the_cli_runs_the_kernel_unless_told_not_to():
    from jdlm.cli import build_parser
    from jdlm.cli.common import set_kernel_modes

    parser = build_parser()
    for command in ("generate", "chat", "eval", "bench"):
        with F.use_kernel("auto"):  # a fresh process's mode
            set_kernel_modes(parser.parse_args([command]))
            assert F.SWITCH.mode == "auto"
            set_kernel_modes(parser.parse_args([command, "--no-matmul-kernel"]))
            assert F.SWITCH.mode == "off"


def test_the_gpu_check_script_runs_quick_and_finds_agreement(tmp_path):
    """scripts/check_float_kernel_gpu.py --quick (tiny shapes, the interpreter): the kernels agree with XLA, the
    forward runs four kernel calls a layer with them on and none off, and gradients are XLA's."""
    assert load_script("check_float_kernel_gpu").main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["pallas_calls_on"] == 4 * 2 and report["pallas_calls_off"] == 0
    assert max(report["swiglu_rel_diff"], report["down_rel_diff"], report["forward_rel_diff"]) < 1e-4
    assert report["forward_top1_agree"] == 1.0 and report["grad_rel_diff"] < 1e-5
