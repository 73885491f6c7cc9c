"""DAWN and AXON, the rules that read attention: each selection rule on hand-built confidences and attention whose
answer is known, the forward's attention rows, the spec and JSON forms, and composition with the caches in the one
loop. Parity with the authors' code (through the torch reference) is in test_sampler_parity.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm import strategies as S
from jdlm.decoding.dawn import dawn_reveal, independent_set
from jdlm.decoding.part import part
from jdlm.decoding.rule import Budget, Context, Rule
from tests.batching import assert_batch_equals_each_alone
from tests.test_decode import MASK, _prompt, python_loop

W, START, L = 6, 4, 10  # a block of 6 at positions 4..9 of a 10-position sequence


def _context(attention=None, column_mean=None, key_confidence=None, masked=None, step=0):
    """A Context for one row; attention [W, L] (default uniform 1 / L), masked [L] (default: the block)."""
    mask = np.zeros(L, bool)
    mask[START:] = True
    return Context(attention=jnp.asarray(np.full((W, L), 1 / L) if attention is None else attention,
                                         jnp.float32)[None],
                   column_mean=jnp.zeros((1, L)) if column_mean is None else jnp.asarray(column_mean)[None],
                   key_confidence=jnp.zeros((1, L)) if key_confidence is None else jnp.asarray(key_confidence)[None],
                   masked=jnp.asarray(mask if masked is None else masked)[None],
                   block_start=jnp.int32(START), step_in_block=jnp.int32(step))


def _row(values):
    return jnp.asarray(np.asarray(values, np.float32))[None]


def _set(indices):
    out = np.zeros((1, W), bool)
    out[0, list(indices)] = True
    return out


CANDIDATES = jnp.ones((1, W), bool)


# ---------------------------------------------------------------- DAWN


def test_dawn_reveals_sure_positions_and_supported_ones():
    attention = np.zeros((W, L))
    attention[1, 0] = 0.5  # block position 1 attends to prompt position 0 ...
    attention[2, 1] = 0.5  # ... and block position 2 to prompt position 1
    key_confidence = np.zeros(L)
    key_confidence[0], key_confidence[1] = 0.95, 0.5  # only key 0 is confident enough to support
    confidence = _row([0.95, 0.75, 0.75, 0.3, 0.2, 0.1])
    # low=0.8 leaves no position for the independent set
    reveal = dawn_reveal(S.Dawn(low=0.8), confidence, CANDIDATES, _context(attention, key_confidence=key_confidence))
    np.testing.assert_array_equal(np.asarray(reveal), _set([0, 1]))  # (a) position 0, (b) position 1


def test_dawn_ignores_attention_sinks_and_a_position_attending_to_itself():
    attention = np.zeros((W, L))
    attention[1, 0] = 0.5
    attention[2, START + 2] = 0.9  # itself: no edge
    key_confidence = np.full(L, 0.95)
    column_mean = np.zeros(L)
    column_mean[0] = 0.02  # key 0 is a sink: above the default bar 0.01
    confidence = _row([0.3, 0.75, 0.75, 0.3, 0.2, 0.1])
    context = _context(attention, column_mean=column_mean, key_confidence=key_confidence)
    reveal = dawn_reveal(S.Dawn(low=0.8), confidence, CANDIDATES, context)
    np.testing.assert_array_equal(np.asarray(reveal), _set([1]))  # nothing supported: the single best
    column_mean[0] = 0.005
    reveal = dawn_reveal(S.Dawn(low=0.8), confidence, CANDIDATES, _context(attention, column_mean=column_mean,
                                                                           key_confidence=key_confidence))
    np.testing.assert_array_equal(np.asarray(reveal), _set([1]))  # position 1 is now supported by key 0
    reveal = dawn_reveal(S.Dawn(low=0.8, induce=0.8), confidence, CANDIDATES,
                         _context(attention, column_mean=column_mean, key_confidence=key_confidence))
    np.testing.assert_array_equal(np.asarray(reveal), _set([1]))  # not confident enough: the fallback, also 1


def test_dawn_independent_set_skips_conflicting_positions():
    attention = np.zeros((W, L))
    attention[1, START + 0] = 0.2  # positions 0 and 1 attend to each other (one way is enough)
    attention[2, START + 3] = 0.2  # 2 and 3 too
    confidence = _row([0.80, 0.78, 0.76, 0.74, 0.72, 0.1])
    reveal = dawn_reveal(S.Dawn(), confidence, CANDIDATES, _context(attention))
    np.testing.assert_array_equal(np.asarray(reveal), _set([0, 2, 4]))


def test_dawn_keeps_the_set_away_from_positions_both_sure_and_supported():
    attention = np.zeros((W, L))
    attention[0, 0] = 0.5  # position 0: sure and supported
    attention[3, START + 0] = 0.5  # position 3 attends to position 0: left out of the independent set
    key_confidence = np.full(L, 0.95)
    confidence = _row([0.95, 0.3, 0.3, 0.75, 0.72, 0.1])
    reveal = dawn_reveal(S.Dawn(), confidence, CANDIDATES, _context(attention, key_confidence=key_confidence))
    np.testing.assert_array_equal(np.asarray(reveal), _set([0, 4]))


def test_dawn_falls_back_to_the_most_confident():
    confidence = _row([0.3, 0.6, 0.65, 0.2, 0.6, -np.inf])
    candidates = jnp.asarray([[True] * 5 + [False]])
    reveal = dawn_reveal(S.Dawn(), confidence, candidates, _context())
    np.testing.assert_array_equal(np.asarray(reveal), _set([2]))


def test_independent_set_is_greedy_by_confidence():
    conflict = np.zeros((1, 4, 4), bool)
    for a, b in [(0, 1), (1, 2), (2, 3)]:  # a path 0-1-2-3
        conflict[0, a, b] = conflict[0, b, a] = True
    chosen = independent_set(_row([0.5, 0.9, 0.6, 0.55]), jnp.ones((1, 4), bool), jnp.asarray(conflict))
    np.testing.assert_array_equal(np.asarray(chosen), [[False, True, False, True]])


# ---------------------------------------------------------------- AXON


@part
class _Given(Rule):
    """A base rule whose choice is given: `reveal`, one bool per block position."""

    reveal: tuple = ()

    def select(self, confidence, candidates, budget, key):
        return jnp.asarray(self.reveal)[None] & candidates


def _axon_step(axon, confidence, base_reveal, attention, column_mean=None, step=0, memory=None):
    """Axon.select_attending on one row, over a base rule that reveals `base_reveal`."""
    rule = S.Axon(base=_Given(reveal=tuple(base_reveal)), **axon)
    memory = rule.init_memory(1, len(CANDIDATES[0])) if memory is None else memory
    return rule.select_attending(confidence, CANDIDATES, Budget(count=jnp.int32(1), fraction=jnp.float32(1)), None,
                                 _context(attention, column_mean=column_mean, step=step), memory)


def _block_attention(rows):
    """[W, L] with the given [W, W] block part (queries over the block's keys)."""
    attention = np.zeros((W, L))
    attention[:, START:] = rows
    return attention


def test_axon_keeps_the_base_when_the_residue_leans_on_it():
    rows = np.zeros((W, W))
    rows[:, 0] = 1.0  # everyone attends to position 0, which the base reveals
    confidence = _row([0.9, 0.95, 0.95, 0.95, 0.95, 0.95])  # the residue is confident: 1 - c = 0.05 < g = 1
    reveal, _ = _axon_step({}, confidence, [True] + [False] * 5, _block_attention(rows))
    np.testing.assert_array_equal(np.asarray(reveal), _set([0]))


def test_axon_fixed1_reveals_the_anchor_the_uncertain_positions_lean_on():
    rows = np.zeros((W, W))
    rows[2:, 1] = 0.8  # the uncertain positions 2..5 attend to position 1
    rows[2:, 0] = 0.2
    confidence = _row([0.9, 0.8, 0.3, 0.3, 0.3, 0.3])
    reveal, _ = _axon_step({}, confidence, [True] + [False] * 5, _block_attention(rows))  # base: position 0
    np.testing.assert_array_equal(np.asarray(reveal), _set([1]))


def test_axon_cover_adds_anchors_until_it_covers_what_the_base_covered():
    rows = np.zeros((W, W))
    rows[2, 0], rows[3, 1], rows[4, 5], rows[5, 4] = 1.0, 1.0, 1.0, 1.0  # each uncertain row leans on one key
    confidence = _row([0.6, 0.7, 0.3, 0.3, 0.5, 0.55])
    base = [True, True, False, False, False, False]  # C(D) = 0.7 * 0.6 + 0.7 * 0.7
    attention = _block_attention(rows)
    one, _ = _axon_step({"selector": "fixed1", "gate": "coverage_gap"}, confidence, base, attention)
    cover, _ = _axon_step({"selector": "cover", "gate": "coverage_gap"}, confidence, base, attention)
    assert int(np.asarray(one).sum()) == 1
    # Anchors by gain: 1 (0.7*0.7), then 0 (0.7*0.6) reaches C(D); 5 and 4 cover less.
    np.testing.assert_array_equal(np.asarray(cover), _set([0, 1]))


def test_axon_sink_keys_are_never_anchors_by_their_attention():
    rows = np.zeros((W, W))
    rows[2:, 1] = 0.8
    rows[2:, 3] = 0.1
    column_mean = np.zeros(L)
    column_mean[START + 1] = 0.5  # key 1 is a sink
    confidence = _row([0.9, 0.8, 0.3, 0.6, 0.3, 0.3])
    reveal, _ = _axon_step({}, confidence, [True] + [False] * 5, _block_attention(rows), column_mean=column_mean)
    np.testing.assert_array_equal(np.asarray(reveal), _set([3]))


def test_axon_progress_stall_fires_only_when_the_pace_does_not_grow():
    confidence = _row([0.9, 0.85, 0.3, 0.3, 0.3, 0.3])
    rows = np.zeros((W, W))
    rows[:, 1] = 1.0  # the anchor is position 1
    axon = {"gate": "progress_stall", "max_anchor_steps": 8, "pace_steps": 4}
    base = [True] + [False] * 5  # r = 1/6, below the pace ceil(6 / 4) / 6 = 2/6
    first, memory = _axon_step(axon, confidence, base, _block_attention(rows), step=0)
    np.testing.assert_array_equal(np.asarray(first), _set([0]))  # step 0: no earlier pace to compare with
    second, _ = _axon_step(axon, confidence, base, _block_attention(rows), step=1, memory=memory)
    np.testing.assert_array_equal(np.asarray(second), _set([1]))  # the pace stalled: the anchor instead
    faster, _ = _axon_step(axon, confidence, [True, True] + [False] * 4, _block_attention(rows), step=1,
                           memory=memory)
    np.testing.assert_array_equal(np.asarray(faster), _set([0, 1]))  # r grew: the base goes on


def test_axon_anchor_steps_and_exit():
    rows = np.zeros((W, W))
    rows[2:, 1] = 0.8
    confidence = _row([0.9, 0.8, 0.3, 0.3, 0.3, 0.3])
    base = [True] + [False] * 5
    late, _ = _axon_step({}, confidence, base, _block_attention(rows), step=1)  # released: the first step only
    np.testing.assert_array_equal(np.asarray(late), _set([0]))
    allowed, _ = _axon_step({"max_anchor_steps": 3}, confidence, base, _block_attention(rows), step=1)
    np.testing.assert_array_equal(np.asarray(allowed), _set([1]))
    settled, _ = _axon_step({"max_anchor_steps": 3, "exit_confidence": 0.4}, confidence, base,
                            _block_attention(rows), step=1)  # mean confidence 0.48 > 0.4: the base decides
    np.testing.assert_array_equal(np.asarray(settled), _set([0]))


def test_axon_always_reveals_something():
    confidence = _row([0.9, 0.8, 0.3, 0.3, 0.3, 0.3])
    reveal, _ = _axon_step({}, confidence, [False] * 6, _block_attention(np.zeros((W, W))), step=2)
    np.testing.assert_array_equal(np.asarray(reveal), _set([0]))


# ---------------------------------------------------------------- forms and errors


@pytest.mark.parametrize("spec", ["dawn", "dawn sure=0.8 edge=0.05", "axon", "axon base=threshold:0.8 selector=cover",
                                  "axon base=entropy,top_p=0.9 gate=progress_stall max_anchor_steps=3 dual",
                                  "axon base=low_confidence prophet"])
def test_attention_rules_round_trip(spec):
    strategy = S.parse_strategy(spec)
    assert S.parse_strategy(strategy.spec) == strategy
    assert S.Strategy.from_dict(strategy.to_dict()) == strategy


@pytest.mark.parametrize("make, match", [
    (lambda: S.parse_strategy("axon gate=sometimes"), "axon gate must be one of coverage_gap, progress_stall"),
    (lambda: S.parse_strategy("axon selector=all"), "axon selector must be one of fixed1, cover"),
    (lambda: S.parse_strategy("axon base=axon"), "axon base must be a rule other than axon"),
    (lambda: S.parse_strategy("axon base=speculative"), "unknown strategy 'speculative'"),
    (lambda: S.parse_strategy("axon candidates=0"), "axon candidates must be a whole number"),
    (lambda: S.parse_strategy("axon exit_confidence=2"), "exit_confidence must be in"),
    (lambda: S.parse_strategy("dawn sure=1.5"), r"dawn sure must be in \(0, 1\]"),
    (lambda: S.parse_strategy("dawn attention_layers=0"), "attention_layers must be a positive integer"),
], ids=["gate", "selector", "nested_axon", "unknown_base", "no_candidates", "exit", "dawn_sure", "no_layers"])
def test_bad_attention_rules_are_refused(make, match):
    with pytest.raises(jdlm.StrategyError, match=match):
        make()


# ---------------------------------------------------------------- the forward's attention, and composition


@pytest.fixture(scope="module")
def params():
    cfg = jdlm.tiny(n_layers=2, d_model=32, n_heads=2, n_kv_heads=2, head_dim=16, mlp_hidden=64)
    return jdlm.init_params(cfg, jax.random.key(3), std=0.3)


def test_forward_view_attention_rows_and_column_means(params):
    from jdlm.decoding.cache import SequenceInputs

    tokens = np.concatenate([_prompt(2, length=5), np.full((2, 8), MASK, np.int32)], axis=1)
    key_mask = np.ones((2, 13), bool)
    key_mask[0, :2] = False  # row 0: two padding positions
    positions = np.maximum(np.cumsum(key_mask, axis=1) - 1, 0).astype(np.int32)
    seq = SequenceInputs(params=params, positions=positions, key_mask=key_mask, prompt_len=5, block_length=4,
                         span="sequence", probs_layers=(0, 1))
    view, _ = seq.full(tokens, jnp.int32(9), return_cache=False)
    out = jdlm.forward(params, tokens, positions=positions, key_mask=key_mask, probs_layers=(0, 1))
    probs = (out.attn_probs[0] + out.attn_probs[1]) / 2  # [B, L, L]
    np.testing.assert_allclose(np.asarray(view.attention), np.asarray(probs[:, 9:13]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(view.column_mean[0]), np.asarray(probs[0, 2:].mean(0)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(view.column_mean[1]), np.asarray(probs[1].mean(0)), atol=1e-6)
    assert view.logits.shape[1] == 13 and bool(view.fresh.all())


@pytest.mark.parametrize("rule, cache, guided", [
    ("dawn", "none", False), ("axon", "prefix", True), ("axon selector=cover base=threshold:0.5", "dual", False),
])
def test_attention_rules_compose_with_caches_in_the_one_loop(params, rule, cache, guided):
    strategy = S.parse_strategy(f"{rule} {cache} gen_length=16 block_length=8 steps=16 temperature=0.5")
    if guided:
        strategy = strategy.replace(guidance=S.Guidance(cfg_scale=0.5))
    prompt, key = _prompt(2, seed=4, length=5), jax.random.key(11)
    compiled = jdlm.decode(params, prompt, strategy, key=key)
    stepped = python_loop(params, prompt, strategy, key)
    assert not (np.asarray(compiled.tokens) == MASK).any()
    np.testing.assert_array_equal(np.asarray(compiled.tokens), np.asarray(stepped.tokens))
    np.testing.assert_array_equal(np.asarray(compiled.nfe), np.asarray(stepped.nfe))


def test_axon_batch_with_padding_equals_each_prompt_alone(params):
    strategy = S.parse_strategy("axon selector=cover gen_length=16 block_length=8 steps=16")
    prompts = [list(_prompt(1, seed=s, length=n)[0]) for s, n in [(1, 3), (2, 5)]]
    assert_batch_equals_each_alone(params, prompts, strategy)
