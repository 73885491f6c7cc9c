"""Weight-only quantisation (jdlm/quantize.py): round-trip error bounds, the quantised forward against the float one,
convert --quantize against load(quantize=), checkpoints, errors, and sharded loading on 8 host devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm import quantize as Q
from jdlm import sharding
from jdlm.convert import convert_checkpoint
from jdlm.convert.__main__ import main as convert_main
from jdlm.errors import CheckpointError, UserError
from tests.hf_fixtures import build_torch_model, write_hf_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOKENS = jnp.asarray(np.random.default_rng(0).integers(3, 800, (2, 40)), jnp.int32)


@pytest.fixture(scope="module")
def tiny():
    return jdlm.load_params("tiny", jnp.float32)


@pytest.fixture(scope="module")
def first_step(tiny):
    """[6, 96] held-out arithmetic and countdown prompts followed by masks (a decode's first step), and where the
    masks are."""
    from jdlm.tasks import TASKS

    tok = jdlm.Tokenizer.from_dir(Path(jdlm.__file__).parent / "models" / "tiny", tiny.config)
    rows = []
    for name in ("arithmetic", "countdown"):
        task = TASKS[name]
        for example in task.generate("eval", 3, seed=1):
            prompt = tok.encode(task.prompt(example.input))[:48]
            rows.append(prompt + [tiny.config.mask_id] * (96 - len(prompt)))
    tokens = jnp.asarray(rows, jnp.int32)
    return tokens, np.asarray(tokens == tiny.config.mask_id)


@pytest.fixture(scope="module")
def tiny_logits(tiny, first_step):
    return np.asarray(jdlm.forward(tiny, first_step[0]).logits)


# ---------------------------------------------------------------- quantise / dequantise


@pytest.mark.parametrize("shape,input_axes", [((48, 5, 8), 1), ((5, 8, 48), 2), ((64, 96), 1)])
def test_int8_round_trip_is_within_half_a_step_per_channel(shape, input_axes):
    rng = np.random.default_rng(1)
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.01, 3, shape[input_axes:])  # channels differ
    w[(slice(None),) * input_axes + (0,) * (len(shape) - input_axes)] = 0  # an all-zero output channel
    w_q, scale = Q.quantize_array(jnp.asarray(w), "int8", input_axes)
    assert w_q.dtype == jnp.int8 and w_q.shape == w.shape
    assert scale.dtype == jnp.float32 and scale.shape == shape[input_axes:]
    inputs = tuple(range(input_axes))
    peak = np.abs(np.asarray(w_q, np.int32)).max(axis=inputs)
    assert (peak[scale != 1] == 127).all()  # each channel's largest weight uses the whole range: per-channel scales
    np.testing.assert_allclose(scale, np.where(np.abs(w).max(inputs) > 0, np.abs(w).max(inputs) / 127, 1), rtol=1e-6)
    error = np.abs(w - np.asarray(Q.dequantize_array(w_q, scale)))
    assert (error <= np.asarray(scale) / 2 * (1 + 1e-5)).all()
    assert error.max() > 0  # it does round


def test_fp8_round_trip_is_within_e4m3_precision():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 96)).astype(np.float32) * rng.uniform(0.01, 3, 96)
    w_q, scale = Q.quantize_array(jnp.asarray(w), "fp8", 1)
    assert w_q.dtype == jnp.float8_e4m3fn
    np.testing.assert_allclose(np.abs(np.asarray(w_q, np.float32)).max(0), 448)
    error = np.abs(w - np.asarray(Q.dequantize_array(w_q, scale)))
    assert (error <= np.maximum(np.abs(w) / 16, np.asarray(scale) / 1024) * (1 + 1e-5)).all()


def test_scales_shard_like_their_weights_output_axes():
    for name, input_axes in Q.INPUT_AXES.items():
        assert sharding.PARAM_AXES[Q.scale_name(name)] == sharding.PARAM_AXES[name][input_axes:], name


# ---------------------------------------------------------------- the forward


def _dequantized(params):
    """Float params holding the quantised weights' values: what the quantised forward must compute."""
    layers = []
    for layer in params.weights["layers"]:
        layer = dict(layer)
        for name in Q.INPUT_AXES:
            layer[name] = Q.dequantize_array(layer[name], layer.pop(Q.scale_name(name)))
        layers.append(layer)
    return params.replace(weights={**params.weights, "layers": tuple(layers)})


@pytest.mark.parametrize("mode,mean_tol,top1", [("int8", 0.015, 0.98), ("fp8", 0.03, 0.9)])
def test_quantised_forward_is_close_to_float(tiny, tiny_logits, first_step, mode, mean_tol, top1):
    tokens, masked = first_step
    quantized = Q.quantize_params(tiny, mode)
    layer = quantized.weights["layers"][0]
    assert layer["q"].dtype == Q.MODES[mode][0] and layer["o_scale"].shape == (tiny.config.d_model,)
    assert quantized.weights["embed"].dtype == jnp.float32 and quantized.weights["lm_head"].dtype == jnp.float32
    got = np.asarray(jdlm.forward(quantized, tokens).logits)
    # exactly the float forward over the dequantised weights (scale on the right axes), up to summation order
    want = np.asarray(jdlm.forward(_dequantized(quantized), tokens).logits)
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())
    # and close to the float model's where a decode's first step reads them
    got, reference = got[masked], tiny_logits[masked]
    drift = np.abs(got - reference)
    assert 0 < drift.mean() < mean_tol * np.abs(reference).mean()
    assert (got.argmax(-1) == reference.argmax(-1)).mean() >= top1


def test_quantised_cached_decode_agrees_with_float(tiny):
    """The dual-cache decode of arithmetic problems: int8 weights generate (nearly) the float model's tokens."""
    from jdlm import strategies as S
    from jdlm.tasks import TASKS

    tok = jdlm.Tokenizer.from_dir(Path(jdlm.__file__).parent / "models" / "tiny", tiny.config)
    task = TASKS["arithmetic"]
    prompt, mask = jdlm.pad_prompts([tok.encode(task.prompt(e.input)) for e in task.generate("eval", 4, seed=0)],
                                    tiny.config.pad_id, buckets=None)
    strategy = S.parse_strategy("low_confidence dual gen_length=32 block_length=8 steps=32")
    float_tokens = np.asarray(jdlm.decode(tiny, prompt, strategy, prompt_mask=mask).tokens)[:, -32:]
    int8 = Q.quantize_params(tiny, "int8")
    int8_tokens = np.asarray(jdlm.decode(int8, prompt, strategy, prompt_mask=mask).tokens)[:, -32:]
    assert (float_tokens == int8_tokens).mean() >= 0.9


@pytest.mark.parametrize("spec", ["low_confidence", "low_confidence dual"])
def test_decode_loop_dequantises_inside_the_loop(spec):
    """The compiled decode never holds a compute-dtype copy of the weights outside its loop: XLA hoisted every
    loop-invariant int8 -> bf16 convert into ENTRY (no cache) until `keep_in_loop` pinned them to the step."""
    from jdlm import strategies as S
    from jdlm.decoding import loop

    params = Q.quantize_params(jdlm.load_params("tiny", jnp.bfloat16), "int8")
    strategy = S.parse_strategy(f"{spec} gen_length=16 block_length=8 steps=16")
    args = loop._arguments(params, jnp.zeros((1, 8), jnp.int32), strategy, None, None)
    copies = Q.dequantized_copies(loop._decode_loop.lower(*args).compile().as_text(), params)
    assert copies and "ENTRY" not in copies  # on CPU XLA converts each step, unfused; on GPU it fuses (none)
    assert sum(map(len, copies.values())) % (7 * params.config.n_layers) == 0


def test_quantising_twice_and_unknown_modes(tiny):
    quantized = Q.quantize_params(tiny, "int8")
    assert Q.quantize_params(quantized, "int8") is quantized and Q.quantize_params(tiny, None) is tiny
    with pytest.raises(Q.QuantizationError, match="already quantised to int8"):
        Q.quantize_params(quantized, "fp8")
    with pytest.raises(UserError, match="unknown weight quantisation 'int4'; choose one of int8, fp8"):
        jdlm.load("tiny", quantize="int4")


def test_fp8_is_refused_where_the_gpu_lacks_it(monkeypatch):
    a100 = SimpleNamespace(compute_capability="8.0", device_kind="NVIDIA A100-SXM4-80GB", platform="gpu")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda *a: [a100])
    with pytest.raises(Q.QuantizationError, match="compute capability 8.9 or newer .* A100.* has compute "
                                                  "capability 8.0; use int8"):
        Q.check_mode("fp8")
    assert Q.check_mode("int8") == "int8"
    tpu = SimpleNamespace(device_kind="TPU v4", platform="tpu")
    monkeypatch.setattr(jax, "devices", lambda *a: [tpu])
    with pytest.raises(Q.QuantizationError, match=r"and on CPU, not on TPU v4 \(gpu\); use int8"):
        Q.check_mode("fp8")
    monkeypatch.setattr(jax, "devices", lambda *a: [SimpleNamespace(compute_capability="9.0", device_kind="H100",
                                                                    platform="gpu")])
    assert Q.check_mode("fp8") == "fp8"


# ---------------------------------------------------------------- checkpoints and convert


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A float conversion and an int8 one (through the command line) of the same Hugging Face checkpoint."""
    root = tmp_path_factory.mktemp("quant")
    src = write_hf_checkpoint("llada", build_torch_model("llada", seed=5), root / "hf")
    float_dir = convert_checkpoint("llada", src, root / "float")
    assert convert_main(["llada", str(src), str(root / "int8"), "--quantize", "int8", "--quiet"]) == 0
    return float_dir, root / "int8"


def test_convert_quantize_equals_load_quantize(converted):
    float_dir, int8_dir = converted
    manifest = json.loads((int8_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and manifest["quantization"]["mode"] == "int8"
    assert manifest["params"]["layers/1/gate_scale"] == manifest["params"]["layers/1/gate"][1:]
    assert json.loads((float_dir / "manifest.json").read_text())["format_version"] == 2  # float ones unchanged
    stored, _ = jdlm.load(int8_dir)
    at_load, _ = jdlm.load(float_dir, quantize="int8")
    for a, b in zip(jax.tree.leaves(stored.weights), jax.tree.leaves(at_load.weights)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    tokens = TOKENS[:, :16] % 250
    assert np.array_equal(np.asarray(jdlm.forward(stored, tokens).logits),
                          np.asarray(jdlm.forward(at_load, tokens).logits))
    float_layers = jdlm.load_params(float_dir).weights["layers"]  # float32: 4 bytes a weight, int8 1 and scales
    assert Q.weight_bytes(stored.weights["layers"]) < 0.3 * Q.weight_bytes(float_layers)


def test_quantised_checkpoint_loads_with_dtype_and_refuses_another_mode(converted):
    _, int8_dir = converted
    params = jdlm.load_params(int8_dir, jnp.bfloat16)
    layer = params.weights["layers"][0]
    assert params.dtype == jnp.bfloat16 and layer["attn_norm"].dtype == jnp.bfloat16
    assert layer["up"].dtype == jnp.int8 and layer["up_scale"].dtype == jnp.float32
    assert jdlm.load_params(int8_dir, quantize="int8").weights["layers"][0]["up"].dtype == jnp.int8
    with pytest.raises(CheckpointError, match="stores int8 weights; load it without quantize="):
        jdlm.load_params(int8_dir, quantize="fp8")


def test_unknown_stored_quantisation_is_refused(converted, tmp_path):
    import shutil

    copy = shutil.copytree(converted[1], tmp_path / "ckpt")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["quantization"]["mode"] = "int4"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="weight quantisation 'int4', which this jdlm does not know"):
        jdlm.load_params(copy)


def test_cli_quantize_flag_and_inspect(converted, capsys, tmp_path):
    from jdlm.cli import main as jdlm_main

    assert jdlm_main(["generate", "--quantize", "int8", "-n", "16", "--block-length", "8", "arithmetic:\n2+3="]) == 0
    assert "int8 linear weights" in capsys.readouterr().err
    assert jdlm_main(["inspect", str(converted[1])]) == 0
    assert "float32 (int8 linear weights)" in capsys.readouterr().out
    out = tmp_path / "bench.json"
    assert jdlm_main(["bench", "--random", "test", "--quantize", "fp8", "-s", "low_confidence", "-n", "8",
                      "--prompt-length", "8", "--repeats", "1", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"][0]["quantization"] == "fp8"


# ---------------------------------------------------------------- 8 devices


def test_sharded_load_of_quantised_weights(tmp_path):
    """Quantised at load and stored quantised, on meshes 1x8 and 2x4: every weight and scale where the rules put
    it, the same values and logits as one device."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JDLM_COMPILATION_CACHE": "0"}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "quant_sharding_worker.py"), str(tmp_path)], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8 and set(out["meshes"]) == {"1x8", "2x4"}
    for mesh in out["meshes"].values():
        for how in ("at_load", "stored"):
            assert mesh[how]["shardings_match"], how
            assert mesh[how]["dtypes"] == ["float32", "int8"]
            assert mesh[how]["scale_specs"]["gate_scale"] == "('model',)"
            assert mesh[how]["scale_specs"]["q_scale"] == "('model', None)"
            assert mesh[how]["scale_specs"]["o_scale"] == "(None,)"
            assert mesh[f"{how}_diff"] < 1e-4
        assert mesh["same_weights"]
