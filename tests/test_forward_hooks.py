"""forward's hooks for the strategies to come: extra_embed (ASRD injection), return_hidden (the sampler head),
probs_layers (AXON). Each checked against what it must equal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm.model import lm_head, rms_norm, rotary


@pytest.fixture(scope="module")
def params():
    cfg = jdlm.tiny(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, mlp_hidden=64)
    return jdlm.init_params(cfg, jax.random.key(0), std=0.2)


def _tokens(B=2, T=7, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(3, 200, size=(B, T)), jnp.int32)


def test_extra_embed_shifts_the_input_embedding(params):
    tokens = _tokens()
    swapped = tokens.at[:, 3].set(17)
    embed = params.weights["embed"]
    extra = jnp.zeros((2, 7, embed.shape[1])).at[:, 3].set(embed[17] - embed[tokens[:, 3]])
    with_extra = jdlm.forward(params, tokens, extra_embed=extra).logits
    np.testing.assert_allclose(with_extra, jdlm.forward(params, swapped).logits, atol=1e-5)
    assert not np.allclose(with_extra, jdlm.forward(params, tokens).logits, atol=1e-3)


def test_return_hidden_gives_what_the_head_reads(params):
    out = jdlm.forward(params, _tokens(), return_hidden=True)
    assert out.hidden.shape == (2, 7, params.config.d_model)
    np.testing.assert_allclose(lm_head(params, out.hidden), out.logits, atol=1e-5)


def test_probs_layers_are_the_attention_rows_and_change_nothing_else(params):
    tokens = _tokens()
    key_mask = jnp.asarray([[False, False, True, True, True, True, True]] * 2)
    plain = jdlm.forward(params, tokens, key_mask=key_mask)
    out = jdlm.forward(params, tokens, key_mask=key_mask, probs_layers=(0, -1))
    np.testing.assert_allclose(out.logits, plain.logits, atol=1e-5)
    assert len(out.attn_probs) == 2 and out.attn_probs[0].shape == (2, 7, 7)
    probs = np.asarray(out.attn_probs[0])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert (probs[:, 2:, :2] == 0).all(), "a real query must not attend to padding"
    # Layer 0 by hand: head-averaged softmax(q k / sqrt(H)) after RoPE, from the embeddings.
    cfg, layer = params.config, params.weights["layers"][0]
    h = rms_norm(params.weights["embed"][tokens], layer["attn_norm"], cfg.norm_eps)
    pos = jnp.broadcast_to(jnp.arange(7), (2, 7))
    q = rotary(jnp.einsum("BTD,DNH->BTNH", h, layer["q"]), pos, cfg.rope_theta)
    k = rotary(jnp.einsum("BTD,DKH->BTKH", h, layer["k"]), pos, cfg.rope_theta)
    k = jnp.repeat(k, cfg.n_heads // cfg.n_kv_heads, axis=2)
    scores = jnp.einsum("BTNH,BSNH->BNTS", q, k) / np.sqrt(cfg.head_dim)
    allowed = key_mask[:, None, None, :] | jnp.eye(7, dtype=bool)[None, None]
    expected = jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1).mean(1)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
