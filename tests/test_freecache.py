"""FreeCache: each policy token-exact against the plain PyTorch version in tests/reference/flashdlm.py; refreshed every
step it is the exact decode; the policies' boundaries on hand-built rows; batched equals single; its spec words."""

import numpy as np
import pytest
import torch

import jdlm
from jdlm import strategies as S
from jdlm.errors import StrategyError
from tests.reference.flashdlm import flashdlm_generate
from tests.reference.make_fixtures import MASK_ID
from tests.test_sampler_parity import _models

POLICIES = ("prompt", "block", "boundary", "window")


@pytest.fixture(scope="module", params=["llada", "dream"])
def models(request, tmp_path_factory):
    return request.param, *_models(request.param, tmp_path_factory, seed=11 if request.param == "llada" else 12)


def _prompt(B=1, P=5, seed=0):
    return np.random.default_rng(seed).integers(2, 240, size=(B, P)).astype(np.int32)


def _strategy(cache, rule=None, G=16, W=4, steps=16):
    return jdlm.Strategy(schedule=jdlm.Schedule(gen_length=G, block_length=W, steps=steps),
                         rule=rule or S.Threshold(threshold=0.5), cache=cache)


@pytest.mark.parametrize("policy", POLICIES)
def test_matches_reference(models, policy):
    family, ref, params = models
    prompt = _prompt()
    x, nfe, _ = flashdlm_generate(ref, torch.tensor(prompt, dtype=torch.long), gen_length=16, block_length=4,
                                  mask_id=MASK_ID, rule="threshold", threshold=0.5, shift=family == "dream",
                                  cache=policy, unit=8, window=4)
    exact, _, _ = flashdlm_generate(ref, torch.tensor(prompt, dtype=torch.long), gen_length=16, block_length=4,
                                    mask_id=MASK_ID, rule="threshold", threshold=0.5, shift=family == "dream")
    result = jdlm.decode(params, prompt, _strategy(S.FreeCache(policy=policy, unit=8, window=4)))
    np.testing.assert_array_equal(np.asarray(result.tokens), x[:, 5:].numpy())
    assert int(result.nfe[0]) == nfe
    assert (x != exact).any(), "the frozen keys/values should change this decode (else the test shows nothing)"


@pytest.mark.parametrize("policy", ["block", "boundary"])
def test_counted_rule_matches_reference(models, policy):
    family, ref, params = models
    prompt = _prompt(seed=3)
    x, nfe, _ = flashdlm_generate(ref, torch.tensor(prompt, dtype=torch.long), gen_length=16, block_length=8,
                                  steps=8, mask_id=MASK_ID, rule="counts", shift=family == "dream", cache=policy,
                                  unit=4)
    result = jdlm.decode(params, prompt, _strategy(S.FreeCache(policy=policy, unit=4), S.LowConfidence(), W=8,
                                                   steps=8))
    np.testing.assert_array_equal(np.asarray(result.tokens), x[:, 5:].numpy())
    assert int(result.nfe[0]) == nfe


@pytest.mark.parametrize("policy", POLICIES)
def test_refreshed_every_step_equals_no_cache(models, policy):
    _, _, params = models
    prompt = _prompt(B=2)
    exact = jdlm.decode(params, prompt, _strategy(S.NoCache()))
    cached = jdlm.decode(params, prompt, _strategy(S.FreeCache(policy=policy, unit=8, window=4, refresh_every=1)))
    np.testing.assert_array_equal(np.asarray(cached.tokens), np.asarray(exact.tokens))
    np.testing.assert_array_equal(np.asarray(cached.nfe), np.asarray(exact.nfe))


@pytest.mark.parametrize("policy", ["boundary", "window"])
def test_batched_equals_single(models, policy):
    """Rows at different places (different prompts, one padded) decode as they do alone."""
    _, _, params = models
    prompts = [[5, 9, 13, 40, 41, 7], [100, 3, 77]]
    ids, mask = jdlm.pad_prompts(prompts, 1, buckets=None)
    strategy = _strategy(S.FreeCache(policy=policy, unit=8, window=4))
    batched = jdlm.decode(params, ids, strategy, prompt_mask=mask)
    for row, prompt in enumerate(prompts):
        alone = jdlm.decode(params, np.asarray([prompt], np.int32), strategy)
        np.testing.assert_array_equal(np.asarray(batched.tokens[row]), np.asarray(alone.tokens[0]))
        assert int(batched.nfe[row]) == int(alone.nfe[0])


def test_boundaries_on_hand_built_rows():
    M = 9  # mask id; prompt of 3, generation of 8, block of 4 starting at 7 (the second block)
    tokens = np.array([[1, 2, 3, 4, 4, 4, 4, 4, M, M, M],    # first mask at generation index 5
                       [1, 2, 3, 4, 4, 4, M, M, M, M, M],    # first mask at generation index 3
                       [1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4]])   # nothing masked
    args = {"prompt_len": 3, "block_length": 4, "block_start": 7, "mask_id": M}
    clean = {p: np.asarray(S.FreeCache(policy=p, unit=2).clean(tokens, **args)).tolist()
             for p in ("prompt", "block", "boundary")}
    assert clean == {"prompt": [3, 3, 3], "block": [7, 7, 7], "boundary": [7, 5, 11]}
    assert np.asarray(S.FreeCache(policy="boundary").clean(tokens, **args)).tolist() == [7, 3, 11]  # unit = block


def test_spec_words_and_errors(models):
    parse = S.parse_strategy
    assert parse("threshold:0.9 freecache").cache == S.FreeCache()
    assert parse("threshold:0.9 freecache:window").cache == S.FreeCache(policy="window")
    strategy = parse("threshold:0.9 cache=freecache:policy=boundary,unit=16 gen_length=64")
    assert strategy.cache == S.FreeCache(policy="boundary", unit=16)
    assert parse(strategy.spec) == strategy
    assert jdlm.Strategy.from_dict(strategy.to_dict()) == strategy
    assert S.parse_cache("freecache:prompt") == S.FreeCache(policy="prompt")
    with pytest.raises(StrategyError, match="policy must be one of"):
        parse("threshold:0.9 freecache:everything")
    with pytest.raises(StrategyError, match="positive integer"):
        S.FreeCache(window=0)
    with pytest.raises(StrategyError, match="must divide"):
        jdlm.decode(models[2], _prompt(), _strategy(S.FreeCache(policy="boundary", unit=3)))
