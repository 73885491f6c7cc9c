"""ASRD: temporal-consistency anchors, injection weights, the orthogonal perturbation and the input embeddings they
make, on hand-built cases; revocation in real decodes (anchors never re-masked, the per-position cap holds, a
re-masked position loses its trace); and Asrd with its additions off is Wino token for token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm import strategies as S
from jdlm.decoding import loop
from jdlm.decoding.anchors import (
    AnchorCache,
    injection_weights,
    normalised_entropy,
    orthogonal_noise,
    track,
)
from jdlm.decoding.revocable import RevocableMemory
from jdlm.errors import StrategyError


def _track(cache, prediction, confidence, masked, tokens, offset=0, window=2, min_confidence=0.9):
    a = [jnp.asarray([x]) for x in (prediction, confidence, masked, tokens)]
    entropy = jnp.full_like(a[1], 0.5)
    return track(cache, a[0].astype(jnp.int32), a[1], entropy, a[2], a[3].astype(jnp.int32), a[3] != -1,
                 jnp.int32(offset), window, min_confidence)


# ---------------------------------------------------------------- anchors by temporal consistency


def test_an_anchor_is_a_decoded_prediction_held_for_the_window_and_leaves_when_it_changes():
    cache = AnchorCache.empty(1, 1)
    steps = [  # prediction, confidence, masked before the step, token after it (-1: still masked)
        (7, 0.95, True, 7),   # revealed as 7: streak 1, not yet an anchor
        (7, 0.97, False, 7),  # the twin agrees: streak 2, anchor
        (7, 0.92, False, 7),  # streak 3, still
        (4, 0.96, False, 7),  # the twin now predicts 4: streak 1 and the token differs, leaves the cache
    ]
    seen = []
    for prediction, confidence, masked, token in steps:
        cache = _track(cache, [prediction], [confidence], [masked], [token])
        seen.append((int(cache.streak[0, 0]), bool(cache.anchor[0, 0])))
    assert seen == [(1, False), (2, True), (3, True), (1, False)]


def test_an_unconfident_step_breaks_the_streak_and_a_masked_position_is_never_an_anchor():
    cache = AnchorCache.empty(1, 2)
    for confidence in (0.95, 0.95, 0.5, 0.95):
        cache = _track(cache, [3, 5], [confidence, 0.99], [False, True], [3, -1])
    assert cache.streak[0].tolist() == [1, 4]
    assert cache.anchor[0].tolist() == [False, False]  # position 1 is sure for 4 steps but still masked


def test_tracking_touches_only_the_block_and_keeps_anchors_of_finished_blocks():
    cache = AnchorCache.empty(1, 4).replace(anchor=jnp.asarray([[True, False, False, False]]))
    cache = _track(cache, [6, 6], [0.99, 0.99], [False, False], [6, 6], offset=2, window=1)
    assert cache.anchor[0].tolist() == [True, False, True, True]
    assert cache.prediction[0].tolist() == [-1, -1, 6, 6]
    assert cache.entropy[0].tolist() == [1.0, 1.0, 1.0, 1.0]  # entropy is kept from masked steps only


# ---------------------------------------------------------------- injection weights, entropy, perturbation


def test_injection_weights_are_a_softmax_over_anchors_by_distance():
    anchor = jnp.asarray([[True, False, False, True, False], [False] * 5])
    w = np.asarray(injection_weights(anchor, jnp.asarray([1, 4]), 1.0))
    e1, e2 = np.exp(-1.0), np.exp(-2.0)
    np.testing.assert_allclose(w[0, 0], [e1 / (e1 + e2), 0, 0, e2 / (e1 + e2), 0], rtol=1e-6)
    np.testing.assert_allclose(w[0, 1], [np.exp(-4) / (np.exp(-4) + e1), 0, 0, e1 / (np.exp(-4) + e1), 0], rtol=1e-6)
    assert (w[1] == 0).all()  # no anchors: no injection (and no NaN)
    flat = np.asarray(injection_weights(anchor, jnp.asarray([1]), 1e6))
    np.testing.assert_allclose(flat[0, 0, [0, 3]], [0.5, 0.5], rtol=1e-5)  # a large distance scale: equal weights


def test_normalised_entropy_is_one_for_uniform_and_near_zero_for_sure():
    logits = jnp.asarray([[[0.0] * 8, [30.0] + [0.0] * 7]])
    h = np.asarray(normalised_entropy(logits))
    np.testing.assert_allclose(h[0, 0], 1.0, rtol=1e-6)
    assert h[0, 1] < 1e-9


def test_orthogonal_noise_is_unit_orthogonal_and_fresh_per_key():
    emb = jax.random.normal(jax.random.key(0), (2, 3, 16))
    keys = jax.random.split(jax.random.key(1), 2)
    u = np.asarray(orthogonal_noise(keys, emb))
    np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.sum(u * np.asarray(emb), axis=-1), 0.0, atol=1e-5)
    assert not np.allclose(u, np.asarray(orthogonal_noise(jax.random.split(jax.random.key(2), 2), emb)))
    assert np.isfinite(np.asarray(orthogonal_noise(keys, jnp.zeros((2, 3, 16))))).all()


@pytest.fixture(scope="module")
def params():
    return jdlm.init_params(jdlm.tiny(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, head_dim=16, mlp_hidden=64),
                            jax.random.key(3), std=0.3)


def test_input_embeddings_guide_masked_positions_and_perturb_candidates_only(params):
    """Generation of 6 after a prompt of 2, block [2, 6) of the generation: anchor at 0 (finished block) and 3
    (in the block), candidate (decoded, not an anchor) at 2, masked at 4 and 5."""
    mask = params.config.mask_id
    E = np.asarray(params.weights["embed"], np.float32)
    tokens = jnp.asarray([[5, 6, 10, 11, 12, 13, mask, mask]])
    cache = AnchorCache.empty(1, 6).replace(anchor=jnp.asarray([[True, False, False, True, False, False]]),
                                            entropy=jnp.asarray([[1.0, 1.0, 1.0, 1.0, 0.5, 0.25]]))
    memory = RevocableMemory(last_accept=jnp.asarray([30]), revoked=jnp.zeros((1, 6), jnp.int32), extra=cache)
    rule = S.Asrd(injection=0.3, perturbation=0.2, anchor_distance=2.0)
    extra = np.asarray(rule.extra_embed(params, tokens, memory, jnp.int32(4), jnp.int32(2), 4,
                                        jax.random.split(jax.random.key(0), 1)))
    assert extra.shape == (1, 8 + 4, E.shape[1])
    outside = np.r_[0:4, 5, 8:12]  # prompt, the first block, the anchor at 5, the shadow slots
    assert (extra[0, outside] == 0).all()
    for position, entropy in ((6, 0.5), (7, 0.25)):  # masked: alpha * H * sum_a w_a E[x_a]
        m = position - 2
        w = np.exp(-np.abs(m - np.array([0, 3])) / 2.0)
        w /= w.sum()
        want = 0.3 * entropy * (w[0] * E[10] + w[1] * E[13])
        np.testing.assert_allclose(extra[0, position], want, rtol=1e-5, atol=1e-7)
    candidate = extra[0, 4]  # token 12: a perturbation of norm 0.2 |E[12]|, orthogonal to E[12]
    np.testing.assert_allclose(np.linalg.norm(candidate), 0.2 * np.linalg.norm(E[12]), rtol=1e-5)
    assert abs(candidate @ E[12]) < 1e-5 * np.linalg.norm(E[12]) ** 2


# ---------------------------------------------------------------- in the decode loop


def _strategy(spec):
    return S.parse_strategy(f"{spec} gen_length=16 block_length=8")


def test_asrd_with_its_additions_off_is_wino(params):
    prompt = np.random.default_rng(0).integers(2, 200, size=(3, 5)).astype(np.int32)
    wino = jdlm.decode(params, prompt, _strategy("wino:0.05 threshold_back=0.97"))
    off = jdlm.decode(params, prompt, _strategy("asrd:0.05 threshold_back=0.97 injection=0 perturbation=0 "
                                                "anchor_window=1000"))
    np.testing.assert_array_equal(np.asarray(off.tokens), np.asarray(wino.tokens))
    np.testing.assert_array_equal(np.asarray(off.nfe), np.asarray(wino.nfe))
    on = jdlm.decode(params, prompt, _strategy("asrd:0.05 threshold_back=0.97 anchor_confidence=0.1 injection=1 "
                                               "perturbation=0.5"))
    assert not np.array_equal(np.asarray(on.tokens), np.asarray(wino.tokens))


@pytest.mark.parametrize("spec", ["wino:0.05 threshold_back=0.97 max_revocations=2",
                                  ("asrd:0.05 threshold_back=0.97 max_revocations=2 anchor_window=1 "
                                   "anchor_confidence=0.1 perturbation=0.5")])
def test_revocation_in_the_loop(params, spec):
    """Stepping the loop by hand: a position that goes back to the mask loses its trace and counts one revocation,
    never more than max_revocations; ASRD never re-masks an anchor; the while_loop gives the same result."""
    prompt = np.random.default_rng(1).integers(2, 200, size=(2, 5)).astype(np.int32)
    strategy = _strategy(spec)
    args = loop._arguments(params, prompt, strategy, None, None)
    inputs, state = loop.init_state(*args)
    step = jax.jit(loop.step)
    remasks = 0
    while bool(loop.running(state, strategy)):
        new = step(inputs, state, strategy)
        before, after = np.asarray(state.tokens[:, 5:]), np.asarray(new.tokens[:, 5:])
        back = (before != params.config.mask_id) & (after == params.config.mask_id)
        remasks += back.sum()
        assert (np.asarray(new.revealed_at)[back] == -1).all()
        gained = np.asarray(new.memory.revoked) - np.asarray(state.memory.revoked)
        np.testing.assert_array_equal(gained, back.astype(int))
        assert np.asarray(new.memory.revoked).max() <= 2
        if isinstance(strategy.rule, S.Asrd):
            assert not (np.asarray(state.memory.extra.anchor) & back).any()
        state = new
    assert remasks > 0, "the case must exercise re-masking"
    if isinstance(strategy.rule, S.Asrd):
        assert np.asarray(state.memory.extra.anchor).any()
    final = loop.result(state, 5)
    assert (np.asarray(final.tokens) != params.config.mask_id).all()
    compiled = jdlm.decode(params, prompt, strategy)
    np.testing.assert_array_equal(np.asarray(compiled.tokens), np.asarray(final.tokens))
    np.testing.assert_array_equal(np.asarray(compiled.nfe), np.asarray(final.nfe))


def test_asrd_checks_its_knobs():
    for bad in ("asrd:0.5 anchor_window=0", "asrd:0.5 anchor_distance=0", "asrd:0.5 injection=-1",
                "asrd:0.5 anchor_confidence=2", "asrd:0.5 prefix"):
        with pytest.raises(StrategyError):
            S.parse_strategy(bad)


def test_a_padded_batch_decodes_each_row_as_alone(params):
    """Left-padded rows of different lengths, ASRD with every addition on (its perturbation draws from each row's
    own key): the batch gives each row the tokens and NFE of that row decoded alone with its key."""
    rng = np.random.default_rng(5)
    prompts = [rng.integers(2, 200, size=n).tolist() for n in (3, 6, 5)]
    ids, mask = jdlm.pad_prompts(prompts, params.config.pad_id, length=6)
    strategy = _strategy("asrd:0.05 threshold_back=0.97 anchor_window=1 anchor_confidence=0.1 injection=1 "
                         "perturbation=0.5")
    keys = loop.row_keys(jax.random.key(9), len(prompts))
    batch = jdlm.decode(params, ids, strategy, key=keys, prompt_mask=mask)
    for b, prompt in enumerate(prompts):
        alone = jdlm.decode(params, np.asarray([prompt], np.int32), strategy, key=keys[b:b + 1])
        np.testing.assert_array_equal(np.asarray(batch.tokens[b]), np.asarray(alone.tokens[0]))
        assert int(batch.nfe[b]) == int(alone.nfe[0])
