"""Prophet (the early all-in commit part): its spec and JSON forms, clear errors, and how it composes with every rule
and cache in the one loop: it ends early, it equals the Python loop over `step`, it changes nothing when it never
fires, caches see the generation as their forwards do. Parity with the reference is in test_sampler_parity.py."""

import dataclasses

import jax
import numpy as np
import pytest

import jdlm
from jdlm import strategies as S
from jdlm.decoding import names
from jdlm.decoding.cache import ForwardView, SequenceInputs
from tests.batching import assert_batch_equals_each_alone
from tests.test_decode import MASK, _prompt, compiles, python_loop

NEVER = S.Prophet(early_gap=1e9, mid_gap=1e9, late_gap=1e9)
# Fires at the first step of the mid phase, whatever the model says: progress >= 0.33, i.e. the 6th of 16 steps
# (block 1's second step with blocks of 4, so a cache has not recomputed the later blocks).
AT_MID = S.Prophet(early_gap=1e9, mid_gap=0.0)
RULES = {"low_confidence": S.LowConfidence(), "threshold": S.Threshold(threshold=0.5)}
CACHES = {"none": S.NoCache(), "prefix": S.PrefixCache(), "dual": S.DualCache()}


def _params(family):
    cfg = jdlm.tiny(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, head_dim=16, mlp_hidden=64, family=family,
                    logits_shift=family == "dream")
    return jdlm.init_params(cfg, jax.random.key(3), std=0.3)


@pytest.fixture(scope="module")
def params():
    return _params("llada")


def _strategy(rule="low_confidence", cache="none", commit=None, **schedule):
    sched = jdlm.Schedule(**{"gen_length": 16, "block_length": 4, "steps": 16, **schedule})
    return jdlm.Strategy(schedule=sched, rule=RULES[rule], cache=CACHES[cache], commit=commit)


def _same(a, b, trace=True):
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.nfe), np.asarray(b.nfe))
    if trace:
        np.testing.assert_array_equal(np.asarray(a.trace.step), np.asarray(b.trace.step))


# ---------------------------------------------------------------- text and JSON forms


@pytest.mark.parametrize("strategy", [
    S.Strategy(commit=S.Prophet()),
    S.parse_strategy("threshold:0.9 dual prophet late_gap=3 answer_start=7 gen_length=64"),
    S.parse_strategy("low_confidence prefix commit=prophet mid_from=0.25 answer_length=2 cfg_scale=1.5"),
    S.Strategy(rule=S.Entropy(top_p=0.9), commit=S.Prophet(early_gap=9.0, late_from=0.9)),
], ids=["default", "threshold_dual", "prefix_commit_word", "entropy"])
def test_strategy_with_prophet_round_trips(strategy):
    assert strategy.commit is not None
    assert S.parse_strategy(strategy.spec) == strategy
    assert S.Strategy.from_dict(strategy.to_dict()) == strategy
    assert strategy.to_dict()["commit"]["name"] == "prophet"


def test_commit_forms_and_defaults():
    assert S.parse_strategy("low_confidence prophet") == S.parse_strategy("low_confidence commit=prophet")
    assert S.parse_strategy("low_confidence prophet commit=none").commit is None
    assert S.parse_strategy("threshold:0.9 dual").commit is None
    assert "prophet" not in S.Strategy().spec
    old = S.Strategy().to_dict()
    del old["commit"]  # result files written before commit parts existed
    assert S.Strategy.from_dict(old) == S.Strategy()
    knobs = S.parse_strategy("low_confidence prophet early_gap=6 answer_start=3").commit
    assert (knobs.early_gap, knobs.answer_start, knobs.mid_gap) == (6, 3, 5.0)


def test_commit_field_names_are_not_used_by_any_other_part():
    """A spec routes `field=value` by name, so a commit field must not be a rule's, a cache's or the schedule's."""
    def fields(cls):
        return {f.name for f in dataclasses.fields(cls) if f.init}
    others = fields(jdlm.Schedule).union(*(fields(n.load()) for n in (*names.RULES.values(), *names.CACHES.values())))
    for entry in names.COMMITS.values():
        assert not fields(entry.load()) & others, entry.name


@pytest.mark.parametrize("make, match", [
    (lambda: S.parse_strategy("low_confidence oracle"), "a commit part \\(prophet\\)"),
    (lambda: S.parse_strategy("low_confidence commit=oracle"), "unknown commit part 'oracle'"),
    (lambda: S.parse_strategy("low_confidence late_gap=2"), "belongs to the commit part prophet"),
    (lambda: S.parse_strategy("low_confidence prophet gen_length=32 answer_start=32"), "lies past the generation"),
    (lambda: S.Prophet(late_gap=-1.0), "late_gap must be a finite number >= 0"),
    (lambda: S.Prophet(early_gap=float("inf")), "early_gap must be a finite number >= 0"),
    (lambda: S.Prophet(mid_from=0.8, late_from=0.5), "must not exceed late_from"),
    (lambda: S.Prophet(answer_length=0), "answer_length must be a positive integer"),
    (lambda: S.Prophet(answer_start=2.5), "answer_start must be an integer"),
    (lambda: S.parse_strategy("low_confidence prophet answer_start=-1"), "answer_start must be an integer >= 0"),
    (lambda: S.parse_strategy("low_confidence prophet late_gap=wide"), "late_gap must be a number"),
    (lambda: S.Strategy.from_dict({**S.Strategy().to_dict(), "commit": {"name": "oracle"}}),
     "unknown commit 'oracle'"),
    (lambda: S.Strategy(commit=S.Threshold()), "commit must be None or one of prophet"),
], ids=["unknown_word", "unknown_commit", "field_without_prophet", "region_past_end", "negative_gap", "inf_gap",
        "phases_out_of_order", "empty_region", "fractional_start", "negative_start", "word_gap", "unknown_json",
        "rule_as_commit"])
def test_bad_prophet_settings_are_refused(make, match):
    with pytest.raises(jdlm.StrategyError, match=match):
        make()


# ---------------------------------------------------------------- composition with rules and caches


# Each case compiles a decode loop (seconds on a CPU): every rule and every cache is covered, not every pair.
@pytest.mark.parametrize("family, rule, cache", [("llada", "low_confidence", "none"), ("llada", "threshold", "prefix"),
                                                 ("llada", "threshold", "dual"), ("dream", "low_confidence", "dual")])
def test_prophet_ends_early_and_fills_the_whole_generation(params, family, rule, cache):
    params = params if family == "llada" else _params(family)
    prompt = _prompt(2, seed=4, length=5)
    plain = jdlm.decode(params, prompt, _strategy(rule, cache))
    early = jdlm.decode(params, prompt, _strategy(rule, cache, commit=AT_MID))
    tokens, nfe = np.asarray(early.tokens), np.asarray(early.nfe)
    assert not (tokens == MASK).any()
    assert (nfe < np.asarray(plain.nfe)).all(), (nfe, np.asarray(plain.nfe))
    assert int(early.forwards) == nfe.max(), "the loop must end once every row has committed"
    if rule == "low_confidence":
        assert (nfe == 6).all()  # g / steps = 6 / 16 is the first progress >= 0.33
    # The all-in commit is recorded at the forward pass that decided it, for every position it filled.
    trace = np.asarray(early.trace.step)
    for row in range(2):
        last = trace[row] == nfe[row] - 1
        assert last.sum() > 1 and (trace[row][~last] < nfe[row] - 1).all()


@pytest.mark.parametrize("rule, cache", [("low_confidence", "prefix"), ("threshold", "dual")])
def test_prophet_that_never_fires_changes_nothing(params, rule, cache):
    """Sampled, so the block's proposals must be drawn exactly as without a commit part."""
    prompt, key = _prompt(2, seed=6, length=5), jax.random.key(2)
    plain = jdlm.decode(params, prompt, _strategy(rule, cache, temperature=0.6), key=key)
    never = jdlm.decode(params, prompt, _strategy(rule, cache, NEVER, temperature=0.6), key=key)
    _same(plain, never)


@pytest.mark.parametrize("rule, cache, guided, eos_stop", [
    ("low_confidence", "none", True, True), ("threshold", "prefix", False, True), ("low_confidence", "dual", True, False),
])
def test_while_loop_equals_python_loop_over_step(params, rule, cache, guided, eos_stop):
    strategy = _strategy(rule, cache, AT_MID, temperature=0.6, stop_at_eos=eos_stop).replace(
        guidance=S.Guidance(cfg_scale=0.5) if guided else None)
    prompt, key = _prompt(2, seed=4, length=3), jax.random.key(11)
    compiled = jdlm.decode(params, prompt, strategy, key=key)
    _same(compiled, python_loop(params, prompt, strategy, key))
    assert (np.asarray(compiled.nfe) < 16).all()


@pytest.mark.parametrize("cache", [S.PrefixCache(refresh_every=1), S.DualCache(refresh_every=1)],
                         ids=["prefix", "dual"])
def test_cache_refreshed_every_step_equals_no_cache(params, cache):
    prophet = S.Prophet(early_gap=1e9, mid_gap=1.0, late_gap=0.3)  # fires on what the model says
    exact = jdlm.decode(params, _prompt(2), _strategy(commit=prophet))
    cached = jdlm.decode(params, _prompt(2), _strategy(commit=prophet).replace(cache=cache))
    _same(exact, cached)


def test_batch_with_padding_equals_each_prompt_alone(params):
    strategy = _strategy("threshold", "dual", S.Prophet(early_gap=1.5, mid_gap=0.8, late_gap=0.3))
    prompts = [list(_prompt(1, seed=s, length=n)[0]) for s, n in [(1, 3), (2, 5), (3, 5)]]
    assert_batch_equals_each_alone(params, prompts, strategy)


def test_dual_cache_fills_later_blocks_with_the_block_start_proposals(params):
    """The dual cache recomputes only the block: the later blocks are filled with the greedy proposals of the full
    forward at the block's first step (as stale as their cached keys/values), the block with this step's own."""
    strategy = _strategy("low_confidence", "dual", AT_MID)
    prompt = _prompt(1, seed=2, length=5)
    from jdlm.decoding import loop

    args = loop._arguments(params, prompt, strategy, None, None)
    inputs, state = loop.init_state(*args)
    step, before = jax.jit(loop.step), []
    while bool(loop.running(state, args[4])):
        before.append(state.tokens)
        state = step(inputs, state, args[4])
    assert len(before) == 6  # block 1 starts at the 5th forward pass and its 2nd commits everything
    P, G = 5, 16

    def greedy(logits):
        return np.asarray(logits.at[..., params.config.mask_id].set(-np.inf).argmax(-1))

    # The block's proposals at the 6th forward: the dual cache's window over the keys/values of the 5th.
    seq = SequenceInputs(params=params, positions=inputs.seq.positions, key_mask=None, prompt_len=P, block_length=4)
    _, kv = S.DualCache().block_logits(seq, before[4], S.DualCache().init(params, 1, P + G), np.bool_(True), P + 4)
    window = S.DualCache().block_logits(seq, before[5], kv, np.bool_(False), P + 4)[0].logits
    final = np.asarray(state.tokens[:, P:])
    was_masked = np.asarray(before[-1][:, P:]) == params.config.mask_id
    later = was_masked & (np.arange(G) >= 8)
    assert later.sum() == 8 and was_masked[:, 4:8].sum() == 3
    np.testing.assert_array_equal(final[later], greedy(jdlm.forward(params, before[4]).logits[:, P:])[later])
    np.testing.assert_array_equal(final[:, 4:8][was_masked[:, 4:8]], greedy(window)[was_masked[:, 4:8]])


@pytest.mark.parametrize("family, cache", [("llada", "none"), ("llada", "prefix"), ("llada", "dual"),
                                           ("dream", "prefix"), ("dream", "dual")])
def test_whole_generation_logits_match_the_block_logits(family, cache):
    """Each cache's forward over the generation span: `fresh` marks what it computed (everything on a full forward;
    the block on for the prefix cache's window; the block for the dual cache's), and the block's logits are those of
    the same cache asked for the block alone. Dream's windows start one position early (shifted logits)."""
    params = _params(family)
    P, G, W = 5, 16, 4
    tokens = np.concatenate([_prompt(2, length=P), np.full((2, G), MASK, np.int32)], axis=1)
    tokens[:, P:P + 6] = 7  # blocks 0 and half of 1 decoded: block 1 is current
    L, block_start = P + G, P + W
    positions = np.broadcast_to(np.arange(L, dtype=np.int32), (2, L))
    part = CACHES[cache]
    kv = part.init(params, 2, L)

    @jax.jit
    def second_step(seq, kv):  # the block's first step fills the cache, its second reads it
        _, filled = part.block_logits(seq, tokens, kv, np.bool_(True), block_start)
        return part.block_logits(seq, tokens, filled, np.bool_(False), block_start)[0]

    results = {span: second_step(SequenceInputs(params=params, positions=positions, key_mask=None, prompt_len=P,
                                                block_length=W, span=span), kv)
               for span in ("block", "generation")}
    generation = results["generation"]
    assert isinstance(generation, ForwardView) and generation.logits.shape[1] == G
    expected_fresh = {"none": np.arange(G) >= 0, "prefix": np.arange(G) >= W,
                      "dual": (np.arange(G) >= W) & (np.arange(G) < 2 * W)}[cache]
    np.testing.assert_array_equal(np.asarray(generation.fresh), expected_fresh)
    np.testing.assert_allclose(np.asarray(generation.block(W, W)), np.asarray(results["block"].logits), rtol=1e-5,
                               atol=1e-5)


def test_sweeping_prophet_knobs_compiles_once(params):
    values = [0.0, 0.5, 1.0, 2.0]
    strategies = [_strategy(commit=S.Prophet(early_gap=v, mid_gap=v / 2, late_gap=v / 4, mid_from=v / 8,
                                             answer_start=int(v * 2), answer_length=1 + int(v)))
                  for v in values]
    jax.clear_caches()
    with compiles() as compiled:
        results = [jdlm.decode(params, _prompt(2), s) for s in strategies]
    assert len(compiled) == 1
    assert len({np.asarray(r.nfe).tobytes() for r in results}) > 1, "every setting gave the same NFE"
