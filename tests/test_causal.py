"""Greedy causal decoding (`decode_causal`): the compiled cached loop equals plain full forwards, token for token."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm.errors import ConfigError

GEN = 12


@pytest.fixture(scope="module")
def params():
    config = jdlm.tiny(causal=True, n_kv_heads=2, eot_id=3)
    return jdlm.init_params(config, jax.random.key(11), std=0.3)


def with_config(params, **changes):
    return jdlm.Params(config=dataclasses.replace(params.config, **changes), weights=params.weights)


@jax.jit
def _causal_logits(params, tokens):
    return jdlm.forward(params, tokens, causal=True).logits


def reference_greedy(params, prompt: list[int], gen_length: int) -> list[int]:
    """A plain Python loop: a full causal forward over everything so far, argmax of the last position (the mask
    token excluded), until an end token or `gen_length` tokens; no cache. Each forward runs over a buffer of the
    final length whose positions past the tokens so far hold padding: causal attention never lets a position see a
    later one, so they change nothing, and one compiled forward serves every step."""
    cfg = params.config
    tokens = list(prompt)
    out = []
    for _ in range(gen_length):
        buffer = tokens + [cfg.pad_id] * (len(prompt) + gen_length - len(tokens))
        logits = _causal_logits(params, jnp.asarray([buffer], jnp.int32))[0, len(tokens) - 1]
        logits = np.array(logits, np.float32)
        logits[cfg.mask_id] = -np.inf
        token = int(np.argmax(logits))
        out.append(token)
        tokens.append(token)
        if token in cfg.end_ids:
            break
    return out


def test_cached_loop_equals_full_forwards_for_a_left_padded_batch(params):
    prompts = [[5, 17, 42], [9, 8, 7, 6, 5, 4, 5], [100, 101, 102, 103, 104]]
    ids, mask = jdlm.pad_prompts(prompts, params.config.pad_id, buckets=None)
    result = jdlm.decode_causal(params, ids, GEN, prompt_mask=mask)
    for row, prompt in enumerate(prompts):
        want = reference_greedy(params, prompt, GEN)
        got = [int(t) for t in result.tokens[row]]
        assert got[: len(want)] == want, (row, got, want)
        assert int(result.nfe[row]) == len(want)
        assert [int(s) for s in result.trace.step[row][: len(want)]] == list(range(len(want)))
    assert int(result.forwards) == max(int(n) for n in result.nfe)


def test_stops_at_the_end_token_and_fills_eos(params):
    prompt = [5, 17, 42, 7]
    free = reference_greedy(with_config(params, eos_id=1, eot_id=None), prompt, GEN)
    assert len(free) == GEN  # with random weights no end token comes up here, so one can be chosen
    end = free[4]
    stop = with_config(params, eos_id=end, eot_id=None)
    result = jdlm.decode_causal(stop, np.asarray([prompt]), GEN)
    n = free.index(end) + 1
    assert [int(t) for t in result.tokens[0]] == free[:n] + [end] * (GEN - n)
    assert int(result.nfe[0]) == n == int(result.forwards)  # NFE = tokens generated, the end token included


def test_rejects_a_diffusion_model(params):
    with pytest.raises(ConfigError, match="causal"):
        jdlm.decode_causal(with_config(params, causal=False), np.asarray([[5, 6]]), 4)


def test_old_config_without_the_key_reads_as_diffusion_and_tiny_ar_is_causal():
    from jdlm.config import load_config

    legacy = jdlm.tiny().to_dict()
    del legacy["causal"]
    assert jdlm.ModelConfig.from_dict(legacy).causal is False
    from jdlm.checkpoint import packaged_model_dir

    assert load_config(packaged_model_dir("tiny-ar")).causal is True
    assert load_config(packaged_model_dir("tiny")).causal is False
