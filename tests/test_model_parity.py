"""Logits of converted checkpoints equal transformers' bidirectional Llama (LLaDA) and Qwen2 (Dream)."""

import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm.convert import convert_checkpoint
from tests.hf_fixtures import bidirectional_logits, build_torch_model, write_hf_checkpoint

TOL = 1e-4


@pytest.fixture(scope="module", params=["llada", "dream"])
def converted(request, tmp_path_factory):
    family = request.param
    model = build_torch_model(family, seed=1)
    root = tmp_path_factory.mktemp(family)
    src = write_hf_checkpoint(family, model, root / "hf", shards=2)
    dst = convert_checkpoint(family, src, root / "jdlm")
    params, tokenizer = jdlm.load(dst)
    return family, model, params


def _jdlm_logits(params, tokens, valid=None):
    positions = None
    key_mask = None
    if valid is not None:
        positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
        key_mask = jnp.asarray(valid)
    return np.asarray(jdlm.forward(params, jnp.asarray(tokens), positions=positions, key_mask=key_mask).logits)


def _shift(raw):
    return np.concatenate([raw[:, :1], raw[:, :-1]], axis=1)


def test_logits_match_transformers(converted):
    family, model, params = converted
    tokens = np.random.default_rng(0).integers(0, 250, size=(3, 24))
    ours = _jdlm_logits(params, tokens)
    ref = bidirectional_logits(model, tokens)
    if family == "dream":
        ref = _shift(ref)
    err = np.abs(ours - ref).max()
    print(f"{family} max abs logit error {err:.2e}")
    assert err <= TOL


def test_logits_match_with_left_padding(converted):
    family, model, params = converted
    rng = np.random.default_rng(1)
    tokens = rng.integers(2, 250, size=(3, 20))
    valid = np.ones((3, 20), dtype=bool)
    valid[1, :5] = False
    valid[2, :11] = False
    tokens[~valid] = 1
    ours = _jdlm_logits(params, tokens, valid)
    ref = bidirectional_logits(model, tokens, valid)
    if family == "dream":
        ref = _shift(ref)
    err = np.abs(ours - ref)[valid].max()
    assert err <= TOL
    assert np.isfinite(ours).all()
    # A padded row gives the logits of the same prompt alone (Dream's first real position reads the pad before it
    # through the shift; no sampler ever reads a prompt position's logits).
    alone = _jdlm_logits(params, tokens[2:3, 11:])
    skip = 1 if family == "dream" else 0
    assert np.abs(alone[0, skip:] - ours[2, 11 + skip:]).max() <= TOL
