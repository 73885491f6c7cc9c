"""WINO: the selection on hand-built confidences, the shadow block's attention, and token-exact parity (tokens and
NFE) with an independent PyTorch sampler written from REFERENCE.md 3.2.1 (tests/reference/wino.py) on tiny random
weights, with thresholds low enough that decoded tokens go back to the mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jdlm
from jdlm import strategies as S
from jdlm.decoding.revocable import wino_select
from jdlm.decoding.shadow import shadow_mask
from jdlm.errors import StrategyError
from tests.reference import wino as ref
from tests.reference.make_fixtures import MASK_ID
from tests.test_sampler_parity import _models


def _row(values, dtype=np.float32):
    return jnp.asarray(np.asarray(values, dtype))[None]


def _select(confidence, verify, masked, revocable=None, last_accept=30, threshold=0.6, threshold_back=0.9):
    masked = _row(masked, bool)
    revocable = ~masked if revocable is None else _row(revocable, bool)
    reveal, remask = wino_select(_row(confidence), _row(verify), masked, revocable,
                                 jnp.asarray([last_accept], jnp.int32), threshold, threshold_back)
    return np.flatnonzero(np.asarray(reveal[0])).tolist(), np.flatnonzero(np.asarray(remask[0])).tolist()


# ---------------------------------------------------------------- the selection, by hand


def test_draft_takes_every_masked_position_strictly_above_the_threshold():
    reveal, remask = _select([0.7, 0.6, 0.9, 0.95, 0.1], [1.0] * 5, [1, 1, 1, 0, 1])
    assert reveal == [0, 2]  # 0.6 is not > 0.6; position 3 is decoded
    assert remask == []  # position 3's twin is sure of it


def test_draft_takes_the_best_one_when_none_passes_and_then_verifies_nothing():
    reveal, remask = _select([0.2, 0.5, 0.3, 0.0], [0, 0, 0, 0.1], [1, 1, 1, 0])
    assert reveal == [1]
    assert remask == []  # verification runs only when more than one is drafted


def test_draft_is_capped_at_seventy_percent_of_the_masked_but_at_least_five():
    # 8 masked, all above the threshold: cap = max(floor(5.6), 5) = 5, the five most confident
    conf = [0.91, 0.99, 0.92, 0.98, 0.93, 0.97, 0.94, 0.95]
    reveal, _ = _select(conf, [1.0] * 8, [1] * 8)
    assert reveal == [1, 3, 5, 6, 7]
    # 30 masked: cap = min(21, 20) = 20
    reveal, _ = _select(np.linspace(0.7, 0.99, 30), [1.0] * 30, [1] * 30)
    assert reveal == list(range(10, 30))


def test_the_cap_rule_is_a_knob():
    conf = [0.91, 0.99, 0.92, 0.98, 0.93, 0.97, 0.94, 0.95]
    masked = _row([1] * 8, bool)
    reveal, _ = wino_select(_row(conf), _row([1.0] * 8), masked, ~masked, jnp.asarray([30], jnp.int32), 0.6, 0.9,
                            (1.0, 1, 64))
    assert np.asarray(reveal).all()  # every sure position at once
    reveal, _ = wino_select(_row(conf), _row([1.0] * 8), masked, ~masked, jnp.asarray([30], jnp.int32), 0.6, 0.9,
                            (0.7, 5, 3))
    assert np.flatnonzero(np.asarray(reveal[0])).tolist() == [1, 3, 5]


def test_verification_remasks_doubted_tokens_below_threshold_back():
    reveal, remask = _select([0.8, 0.7, 0.0, 0.0, 0.0], [0, 0, 0.95, 0.5, 0.89], [1, 1, 0, 0, 0])
    assert reveal == [0, 1]
    assert remask == [3, 4]  # 0.95 stays


def test_verification_keeps_fewer_than_the_last_step_drafted():
    # three doubted tokens, last step drafted 3: keep the 2 lowest; last step drafted 1: none
    conf, verify, masked = [0.8, 0.7, 0, 0, 0], [0, 0, 0.3, 0.1, 0.2], [1, 1, 0, 0, 0]
    assert _select(conf, verify, masked, last_accept=3)[1] == [3, 4]
    assert _select(conf, verify, masked, last_accept=4)[1] == [2, 3, 4]
    assert _select(conf, verify, masked, last_accept=1)[1] == []


def test_positions_that_may_not_go_back_are_never_remasked():
    _, remask = _select([0.8, 0.7, 0, 0], [0, 0, 0.1, 0.2], [1, 1, 0, 0], revocable=[0, 0, 0, 1])
    assert remask == [3]


def test_rows_are_decided_alone():
    conf = jnp.asarray([[0.8, 0.7, 0.0, 0.0], [0.2, 0.3, 0.0, 0.0]])
    verify = jnp.asarray([[0.0, 0.0, 0.1, 0.2], [0.0, 0.0, 0.1, 0.2]])
    masked = jnp.asarray([[True, True, False, False]] * 2)
    reveal, remask = wino_select(conf, verify, masked, ~masked, jnp.asarray([30, 30]), 0.6, 0.9)
    np.testing.assert_array_equal(np.asarray(reveal), [[1, 1, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(remask), [[0, 0, 1, 1], [0, 0, 0, 0]])


def test_shadow_mask_hides_each_twin_from_its_own_position_only():
    L, W, start = 6, 3, 2
    mask = np.asarray(shadow_mask(L, W, jnp.int32(start))[0])
    np.testing.assert_array_equal(mask, ref.shadow_allowed(L, W, start).numpy())
    assert mask[:L, :L].all() and not mask[:L, L:].any()
    assert not mask[L + 1, start + 1] and mask[L + 1, start] and mask[L + 1, L:].all()


# ---------------------------------------------------------------- parity with the reference sampler


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    return _models("llada", tmp_path_factory, seed=11)


def _logits_fn(model):
    def logits(x, allowed, positions):
        out = model.model.forward_masked(x, allowed, positions).clone()
        out[..., MASK_ID] = -1e30  # jdlm never proposes the mask token
        return out
    return logits


CASES = {  # thresholds low for random weights, so drafts are wide and twins doubt many tokens
    "two_blocks": {"gen_length": 16, "block_length": 8, "threshold": 0.5, "threshold_back": 0.9},
    "one_block_capped_draft": {"gen_length": 16, "block_length": 16, "threshold": 0.1, "threshold_back": 0.95},
    "four_blocks_revocation_cap": {"gen_length": 32, "block_length": 8, "threshold": 0.3, "threshold_back": 0.97,
                                   "max_revocations": 1},
}


@pytest.mark.parametrize("case", list(CASES))
def test_wino_matches_the_reference_sampler(llada, case):
    model, params = llada
    args = dict(CASES[case])
    cap = args.pop("max_revocations", 64)
    prompt = np.random.default_rng(3).integers(2, 240, size=(3, 5))
    x, nfe, remasks = ref.wino_generate(_logits_fn(model), torch.as_tensor(prompt), mask_id=MASK_ID,
                                        max_revocations=cap, **args)
    assert sum(remasks) > 0, "the case must exercise re-masking"
    strategy = S.Strategy(schedule=S.Schedule(gen_length=args["gen_length"], block_length=args["block_length"]),
                          rule=S.Wino(threshold=args["threshold"], threshold_back=args["threshold_back"],
                                      max_revocations=cap))
    result = jdlm.decode(params, prompt.astype(np.int32), strategy)
    np.testing.assert_array_equal(np.asarray(result.tokens), x.numpy())
    np.testing.assert_array_equal(np.asarray(result.nfe), nfe)
    assert int(result.forwards) == max(nfe)
    x_free, nfe_free, _ = ref.wino_generate(_logits_fn(model), torch.as_tensor(prompt), mask_id=MASK_ID, **args)
    same_as_upstream = np.array_equal(x_free.numpy(), x.numpy()) and nfe_free == nfe
    assert same_as_upstream == (cap == 64)  # a cap of 64 never binds (upstream agrees); a cap of 1 does


def test_wino_spec_and_checks():
    s = S.parse_strategy("wino:0.5 threshold_back=0.8 max_revocations=2 gen_length=32")
    assert s.rule == S.Wino(threshold=0.5, threshold_back=0.8, max_revocations=2)
    assert S.parse_strategy(s.spec) == s and S.Strategy.from_dict(s.to_dict()) == s
    for bad in ("wino:0.5 dual", "wino:0.5 cfg_scale=1", "wino:1.5", "wino:0.5 max_revocations=-1",
                "wino:0.5 prophet"):
        with pytest.raises(StrategyError):
            S.parse_strategy(bad)
    dream = jdlm.init_params(jdlm.tiny(family="dream", logits_shift=True, n_kv_heads=2, qkv_bias=True),
                             jax.random.key(0))
    with pytest.raises(StrategyError, match="unshifted"):
        jdlm.decode(dream, np.arange(2, 8, dtype=np.int32)[None], S.parse_strategy("wino:0.5 gen_length=8 block_length=8"))
