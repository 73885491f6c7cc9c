"""jdlm.memory: the analytic memory estimate per device, its parts, and its agreement with XLA's memory analysis of
the compiled decode (tiny shapes, one device)."""

import dataclasses

import jax.numpy as jnp
import pytest

import jdlm
from jdlm import memory
from jdlm import strategies as S

LLADA = jdlm.llada_8b()
SHAPES = dict(prompt_len=768, gen_length=256, block_length=32)


def test_weights_are_the_parameter_count_and_split_over_model():
    assert memory.weight_bytes_per_device(LLADA, "bfloat16") == 2 * LLADA.n_params
    norms = 2 * LLADA.d_model * (2 * LLADA.n_layers + 1)  # replicated over model
    assert memory.weight_bytes_per_device(LLADA, "bfloat16", model=2) == (2 * LLADA.n_params - norms) // 2 + norms
    dream = jdlm.dream_7b()
    assert memory.weight_bytes_per_device(dream, "float32") == 4 * dream.n_params  # biases counted too


def test_parts_follow_the_mesh_and_the_cache():
    one = memory.decode_memory(LLADA, batch=16, cache="dual", **SHAPES)
    tp = memory.decode_memory(LLADA, batch=16, cache="dual", model=2, **SHAPES)
    dp = memory.decode_memory(LLADA, batch=16, cache="dual", data=2, **SHAPES)
    none = memory.decode_memory(LLADA, batch=16, cache="none", **SHAPES)
    L = SHAPES["prompt_len"] + SHAPES["gen_length"]
    assert one.kv_cache == 2 * 32 * 16 * L * 32 * 128 * 2 and none.kv_cache == 0
    assert tp.kv_cache == dp.kv_cache == one.kv_cache // 2  # kv heads over model, rows over data
    assert dp.weights == one.weights and tp.weights < one.weights
    assert tp.logits == one.logits // 2  # vocabulary over model
    assert one.total == sum(v for k, v in one.as_dict().items() if k != "total")
    odd = memory.decode_memory(LLADA, batch=3, data=2, **SHAPES)  # padded to 4 rows: 2 a device
    assert odd.state == memory.decode_memory(LLADA, batch=2, **SHAPES).state


def test_flash_attention_drops_the_scores():
    xla = memory.decode_memory(LLADA, batch=1, **SHAPES)
    flash = memory.decode_memory(LLADA, batch=1, flash_attention=True, **SHAPES)
    L = SHAPES["prompt_len"] + SHAPES["gen_length"]
    scores = 2 * 32 * L * L * 4  # scores and probabilities, float32, 32 heads
    assert xla.activations > scores > flash.activations


@pytest.mark.parametrize("spec,cache", [("low_confidence", "none"), ("threshold:0.9 dual", "dual")])
def test_estimate_is_within_a_quarter_of_xla(spec, cache):
    """The compiled decode (abstract inputs, nothing allocated) against the estimate: same order, within 25%."""
    config = dataclasses.replace(jdlm.tiny(), n_layers=2)
    strategy = S.parse_strategy(f"{spec} gen_length=32 block_length=16 steps=32")
    analysis = memory.compiled_decode(config, jnp.float32, strategy, 4, 96, None).memory_analysis()
    xla = analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
    est = memory.decode_memory(config, batch=4, prompt_len=96, gen_length=32, block_length=16, cache=cache,
                               dtype="float32")
    assert analysis.argument_size_in_bytes == pytest.approx(est.weights, rel=0.01)  # the weights, and a prompt
    assert est.total == pytest.approx(xla, rel=0.25)


def test_the_load_check_counts_the_shards_of_a_model_axis(monkeypatch):
    """`--mesh model=2` restores each weight split in two: LLaDA-8B in float32 (32 GB) fits two 24 GB devices, not
    when cast from bfloat16 (both copies, 48 GB, over two)."""
    from jdlm.cli import memory as cli_memory
    from jdlm.errors import UsageError

    monkeypatch.setattr(cli_memory, "available_bytes", lambda: (24 * 10**9, "the NVIDIA L4"))
    with pytest.raises(UsageError, match=r"needs about 32\.\d GB \(8\.0B parameters x 4 bytes, plus"):
        cli_memory.check_fits_memory(LLADA, "float32", "--model llada-8b")
    cli_memory.check_fits_memory(LLADA, "float32", "--model llada-8b", shards=2)
    with pytest.raises(UsageError, match=r"needs about 24\.\d GB per device \(8\.0B parameters x 4 bytes over 2 "):
        cli_memory.check_fits_memory(LLADA, "float32", "--model llada-8b", shards=2, stored="bfloat16")
