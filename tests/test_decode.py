"""The decode loop: compile once per structure, batching equals single decoding, invariants, cache refresh, the
while_loop equals a Python loop over `step`, clear errors."""

import contextlib
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jdlm
from jdlm import strategies as S
from jdlm.decoding import cache as cache_module
from tests.batching import assert_batch_equals_each_alone

MASK = 250


@pytest.fixture(scope="module", params=["llada", "dream"])
def params(request):
    family = request.param
    cfg = jdlm.tiny(family=family, n_kv_heads=2 if family == "dream" else 4, qkv_bias=family == "dream",
                    logits_shift=family == "dream")
    return jdlm.init_params(cfg, jax.random.key(7), std=0.3)


def _prompt(n, seed=0, length=None):
    rng = np.random.default_rng(seed)
    return rng.integers(2, 200, size=(n, length or 6)).astype(np.int32)


STRATEGIES = {
    "llada_low_confidence": S.llada(gen_length=16, steps=8, block_length=8),
    "llada_random": S.llada(gen_length=16, steps=16, block_length=4, remasking="random"),
    "dream_entropy": S.dream(max_new_tokens=16, steps=8, alg="entropy"),
    "threshold_prefix": S.fast_dllm(gen_length=16, block_length=8, threshold=0.5, cache="prefix"),
    "threshold_dual": S.fast_dllm(gen_length=16, block_length=8, threshold=0.5, cache="dual"),
    "factor": S.fast_dllm(gen_length=16, block_length=8, factor=1.0),
    "cfg": S.llada(gen_length=16, steps=16, block_length=8, cfg_scale=0.5),
    "eos_stop": S.llada(gen_length=16, steps=16, block_length=4).replace(stop_at_eos=True),
}


@contextlib.contextmanager
def compiles():
    """Counts compilations of the decode loop while the block runs: jax.monitoring's lowering events, which fire on
    every compile (also when a persistent compilation cache then supplies the binary)."""
    names = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration" and "_decode_loop" in str(kwargs.get("fun_name")):
            names.append(kwargs["fun_name"])

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def _sweep(params, strategies, prompt_len=5, **kwargs):
    jax.clear_caches()  # earlier tests may have compiled these shapes
    with compiles() as compiled:
        results = [jdlm.decode(params, _prompt(2, length=prompt_len), s, **kwargs) for s in strategies]
    return compiled, results


def test_second_call_with_same_shapes_does_not_recompile(params):
    strategy = STRATEGIES["threshold_dual"]
    compiled, _ = _sweep(params, [strategy, strategy, dataclasses.replace(strategy)])
    assert len(compiled) == 1


@pytest.mark.parametrize("name, make", [
    ("threshold", lambda v: S.fast_dllm(gen_length=16, block_length=8, threshold=v, cache="dual")),
    ("factor", lambda v: S.fast_dllm(gen_length=16, block_length=8, factor=v * 4)),
    ("temperature", lambda v: S.llada(gen_length=16, steps=16, block_length=8, temperature=v)),
    ("cfg_scale", lambda v: S.llada(gen_length=16, steps=16, block_length=8, cfg_scale=v)),
    ("top_p_alg_temp_eps", lambda v: S.dream(max_new_tokens=16, steps=8, top_p=v, alg_temp=v, eps=v / 100)),
    ("steps", lambda v: S.fast_dllm(gen_length=16, block_length=8, steps=2 * round(8 * v))),
    ("wino", lambda v: S.parse_strategy(f"wino:{v} threshold_back={v} gen_length=16 block_length=8")),
    ("asrd", lambda v: S.parse_strategy(f"asrd:{v} gen_length=16 block_length=8")),
])
def test_sweeping_a_knob_compiles_once(params, name, make):
    if name in ("wino", "asrd") and params.config.logits_shift:  # refused by design for Dream-shaped models
        with pytest.raises(jdlm.errors.StrategyError, match="unshifted models"):
            jdlm.decode(params, _prompt(2, length=5), make(0.5))
        return
    values = [0.3, 0.45, 0.6, 0.75, 0.9]
    compiled, results = _sweep(params, [make(v) for v in values])
    assert len(compiled) == 1, f"{name}: {len(compiled)} compilations for {len(values)} values"
    assert len({np.asarray(r.tokens).tobytes() + np.asarray(r.nfe).tobytes() for r in results}) > 1 or \
        name in ("cfg_scale",), f"{name}: every value gave the same decode: is the knob used at all?"


def test_greedy_and_sampled_are_two_structures(params):
    compiled, _ = _sweep(params, [S.llada(gen_length=16, steps=16, block_length=8, temperature=t)
                                  for t in (0.0, 0.5, 0.0, 0.9)])
    assert len(compiled) == 2


def test_numpy_jax_and_list_prompts_share_one_program(params):
    strategy = STRATEGIES["llada_low_confidence"]
    prompt = _prompt(2, length=5)
    jax.clear_caches()
    with compiles() as compiled:
        results = [jdlm.decode(params, p, strategy) for p in (np.asarray(prompt, np.int64), jnp.asarray(prompt),
                                                               np.asarray(prompt).tolist())]
    assert len(compiled) == 1
    for other in results[1:]:
        np.testing.assert_array_equal(np.asarray(other.tokens), np.asarray(results[0].tokens))


def test_no_key_is_key_zero(params):
    strategy = S.llada(gen_length=16, steps=16, block_length=8, temperature=0.9)
    prompt = _prompt(2, length=5)
    tokens = [np.asarray(jdlm.decode(params, prompt, strategy, **kw).tokens)
              for kw in ({}, {"key": jax.random.key(0)}, {}, {"key": jax.random.key(1)})]
    np.testing.assert_array_equal(tokens[0], tokens[1])
    np.testing.assert_array_equal(tokens[0], tokens[2])  # the remembered default keys
    assert (tokens[0] != tokens[3]).any()


def test_no_key_follows_the_default_prng_implementation(params):
    """No key is `jax.random.key(0)` of the PRNG implementation in force, also after the default keys of another
    were remembered."""
    strategy = S.llada(gen_length=16, steps=16, block_length=8, temperature=0.9)
    prompt = _prompt(2, length=5)
    jdlm.decode(params, prompt, strategy)
    with jax.default_prng_impl("rbg"):
        got = jdlm.decode(params, prompt, strategy).tokens
        want = jdlm.decode(params, prompt, strategy, key=jax.random.key(0)).tokens
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_default_keys_first_made_inside_a_jit_serve_a_decode_outside(params):
    """The default keys are remembered per batch size: made first by a `decode` inside the caller's jit, they must
    be an array, not that trace's tracer, for the next decode outside it."""
    from jdlm.decoding import loop

    strategy = S.llada(gen_length=16, steps=16, block_length=8, temperature=0.9)
    prompt = _prompt(3, length=5)
    loop.default_row_keys.cache_clear()
    inside = jax.jit(lambda w, p: jdlm.decode(w, p, strategy).tokens)(params, prompt)
    outside = jdlm.decode(params, prompt, strategy).tokens
    np.testing.assert_array_equal(np.asarray(inside), np.asarray(outside))


def test_prompt_mask_none_bool_and_int_share_one_program(params):
    strategy = STRATEGIES["llada_low_confidence"]
    prompt = _prompt(2, length=5)
    jax.clear_caches()
    with compiles() as compiled:
        plain = jdlm.decode(params, prompt, strategy)
        boolean = jdlm.decode(params, prompt, strategy, prompt_mask=np.ones((2, 5), bool))
        integer = jdlm.decode(params, prompt, strategy, prompt_mask=np.ones((2, 5), np.int32))
    assert len(compiled) == 1
    for other in (boolean, integer):
        np.testing.assert_array_equal(np.asarray(other.tokens), np.asarray(plain.tokens))
    padded_bool = jdlm.decode(params, prompt, strategy, prompt_mask=np.array([[0, 1, 1, 1, 1]] * 2, bool))
    padded_int = jdlm.decode(params, prompt, strategy, prompt_mask=np.array([[0, 1, 1, 1, 1]] * 2))
    padded_list = jdlm.decode(params, prompt.tolist(), strategy, prompt_mask=[[0, 1, 1, 1, 1]] * 2)
    for other in (padded_int, padded_list):
        np.testing.assert_array_equal(np.asarray(other.tokens), np.asarray(padded_bool.tokens))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_batch_with_padding_equals_each_prompt_alone(params, name):
    strategy = STRATEGIES[name]
    prompts = [list(_prompt(1, seed=s, length=n)[0]) for s, n in [(1, 3), (2, 7), (3, 5)]]
    keys = jax.random.split(jax.random.key(5), len(prompts))
    batched = assert_batch_equals_each_alone(params, prompts, strategy, keys)
    assert int(batched.forwards) == int(batched.nfe.max())


class _ForwardCounter:
    """Counts forward passes that really run on the device (a host callback inside the compiled loop): all of
    them, and the full ones (over the whole sequence, without a KV cache to attend to)."""

    def __enter__(self):
        self.calls = self.full = 0
        self._patch = pytest.MonkeyPatch()
        real = cache_module.forward

        def counted(*args, **kwargs):
            jax.debug.callback(self._tick_full if kwargs.get("cache") is None else self._tick)
            return real(*args, **kwargs)

        self._patch.setattr(cache_module, "forward", counted)
        jax.clear_caches()
        return self

    def __exit__(self, *exc):
        self._patch.undo()
        jax.clear_caches()

    def _tick(self):
        self.calls += 1

    def _tick_full(self):
        self.calls += 1
        self.full += 1


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_invariants_under_random_strategies(params, data):
    n_blocks = data.draw(st.sampled_from([1, 2, 4]), "n_blocks")
    block = data.draw(st.sampled_from([2, 4, 8]), "block")
    G = n_blocks * block
    rule = data.draw(st.sampled_from([S.LowConfidence(), S.RandomOrder(), S.Margin(), S.Threshold(threshold=0.6),
                                      S.Factor(factor=2.0), S.Entropy(top_p=0.9)]), "rule")
    cache = data.draw(st.sampled_from([S.NoCache(), S.PrefixCache(), S.DualCache(), S.DualCache(refresh_every=2)]),
                      "cache")
    steps = n_blocks * data.draw(st.sampled_from([1, 2, block]), "steps_per_block")
    temperature = data.draw(st.sampled_from([0.0, 0.7]), "temperature")
    schedule = jdlm.Schedule(gen_length=G, block_length=block, steps=steps, temperature=temperature,
                             keep_idle_steps=data.draw(st.booleans(), "keep_idle"))
    strategy = jdlm.Strategy(schedule=schedule, rule=rule, cache=cache)
    B = data.draw(st.integers(1, 3), "batch")
    prompt = _prompt(B, seed=data.draw(st.integers(0, 100), "seed"))

    with _ForwardCounter() as counter:
        result = jdlm.decode(params, prompt, strategy, key=jax.random.key(1))
    tokens = np.asarray(result.tokens)
    assert tokens.shape == (B, G)
    assert not (tokens == MASK).any(), "a mask token was left in the output"
    assert counter.calls == int(result.forwards), "forwards must count the forward passes that ran"
    assert counter.full == int(result.full_forwards), "full_forwards must count those over the whole sequence"
    assert (np.asarray(result.nfe) <= int(result.forwards)).all()
    trace = np.asarray(result.trace.step)
    assert (trace >= 0).all() and (trace < int(result.forwards)).all()
    if rule.counted and schedule.keep_idle_steps:
        assert (np.asarray(result.nfe) == steps).all()


@pytest.mark.parametrize("cache", [S.PrefixCache(refresh_every=1), S.DualCache(refresh_every=1)], ids=["prefix",
                                                                                                       "dual"])
@pytest.mark.parametrize("rule", [S.LowConfidence(), S.Threshold(threshold=0.4)], ids=["counts", "threshold"])
def test_cache_refreshed_every_step_equals_no_cache(params, cache, rule):
    schedule = jdlm.Schedule(gen_length=16, block_length=4, steps=8)
    exact = jdlm.decode(params, _prompt(2), jdlm.Strategy(schedule=schedule, rule=rule))
    cached = jdlm.decode(params, _prompt(2), jdlm.Strategy(schedule=schedule, rule=rule, cache=cache))
    np.testing.assert_array_equal(np.asarray(cached.tokens), np.asarray(exact.tokens))
    np.testing.assert_array_equal(np.asarray(cached.nfe), np.asarray(exact.nfe))


def test_step_tables_are_made_once_per_schedule():
    a = jdlm.Schedule(gen_length=16, block_length=4, steps=8).tables()
    assert jdlm.Schedule(gen_length=16, block_length=4, steps=8).tables() is a
    assert a.counts.tolist() == [2, 2, 0, 0] and int(a.steps_in_block) == 2
    assert not a.counts.flags.writeable and not a.fraction.flags.writeable  # shared: nobody may change them
    other = jdlm.Schedule(gen_length=16, block_length=4, steps=16).tables()  # another knob value, other tables
    assert other.counts.tolist() == [1, 1, 1, 1]
    dream = jdlm.Schedule(gen_length=8, block_length=8, steps=4, counts="dream", keep_idle_steps=True, eps=0.5)
    assert dream.tables().fraction.tolist() != dataclasses.replace(dream, eps=0.1).tables().fraction.tolist()


def test_prompt_is_never_changed_and_trace_orders_reveals(params):
    strategy = S.llada(gen_length=8, steps=8, block_length=8)
    result = jdlm.decode(params, _prompt(1), strategy)
    # One token per step: the trace is a permutation of the steps.
    assert sorted(np.asarray(result.trace.step[0]).tolist()) == list(range(8))
    conf = np.asarray(result.trace.confidence[0])
    assert ((conf > 0) & (conf <= 1)).all()


def test_stop_at_eos_fills_after_the_end(params):
    # A final norm of zero makes every logit 0, so the argmax is token 0: make that the EOS token.
    cfg = dataclasses.replace(params.config, eos_id=0, pad_id=0)
    eos_params = jdlm.Params(config=cfg, weights={**params.weights, "final_norm": 0 * params.weights["final_norm"]})
    strategy = S.llada(gen_length=16, steps=16, block_length=4)
    full = jdlm.decode(eos_params, _prompt(2), strategy)
    stopped = jdlm.decode(eos_params, _prompt(2), strategy.replace(stop_at_eos=True))
    assert (np.asarray(stopped.tokens) == 0).all() and (np.asarray(full.tokens) == 0).all()
    assert (np.asarray(full.nfe) == 16).all()
    assert (np.asarray(stopped.nfe) == 1).all()  # the first step reveals EOS at position 0; the rest is filled


# ---------------------------------------------------------------- errors, each checked before tracing


@pytest.mark.parametrize("make, match", [
    (lambda: jdlm.Schedule(gen_length=32, block_length=8, steps=6), "multiple of the number of blocks"),
    (lambda: jdlm.Schedule(gen_length=16, block_length=32), "larger than gen_length"),
    (lambda: jdlm.Schedule(gen_length=30, block_length=8, steps=30), "must divide gen_length"),
    (lambda: jdlm.Schedule(temperature=-1.0), "temperature must be a finite number >= 0"),
    (lambda: jdlm.Schedule(temperature=float("inf")), "temperature must be a finite number >= 0"),
    (lambda: S.Guidance(cfg_scale=float("inf")), "cfg_scale must be a finite number"),
    (lambda: S.parse_strategy("threshold:0.9 dual wings=3"), "unknown field 'wings'"),
    (lambda: S.parse_strategy("threshold:inf"), "finite number"),
    (lambda: S.dream(alg="origin").replace(keep_idle_steps=False), "origin rule reveals by Dream's time schedule"),
    (lambda: S.Strategy.from_dict({"rule": {"name": "speculative"}, "cache": {"name": "none"}, "schedule": {}}),
     "unknown rule 'speculative'"),
    (lambda: S.Threshold(threshold=1.5), r"threshold must be in \(0, 1\]"),
    (lambda: S.Threshold(threshold=0.0), r"threshold must be in \(0, 1\]"),
    (lambda: S.parse_rule("speculative:3"), "unknown strategy 'speculative'"),
    (lambda: S.parse_cache("paged"), "unknown cache 'paged'"),
    (lambda: S.parse_rule("threshold:high"), "needs a number"),
    (lambda: jdlm.Strategy(rule="threshold"), "rule must be one of"),
], ids=["steps_not_dividing", "block_too_long", "block_not_dividing", "negative_temperature", "inf_temperature",
        "inf_cfg", "unknown_field", "inf_threshold", "origin_without_dream_schedule", "unknown_rule_json",
        "threshold_high", "threshold_zero", "unknown_rule", "unknown_cache", "bad_value", "rule_not_object"])
def test_invalid_strategies_are_refused(make, match):
    with pytest.raises(jdlm.StrategyError, match=match):
        make()


@pytest.mark.parametrize("prompt, match", [
    (np.zeros((1, 0), np.int32), "empty"),
    (np.full((1, 500), 5, np.int32), "prompt too long"),
    (np.array([[3.0, 4.0]]), "integer token ids"),
    (np.array([[3, MASK, 4]]), "contains the mask token"),
    (np.array([[3, 9999]]), "must lie in"),
], ids=["empty", "too_long", "float", "mask_in_prompt", "out_of_vocab"])
def test_bad_prompts_are_refused_before_tracing(params, prompt, match):
    with compiles() as compiled, pytest.raises(jdlm.InputError, match=match):
        jdlm.decode(params, prompt, S.llada(gen_length=16, steps=16, block_length=8))
    assert not compiled


def test_right_padding_is_refused(params):
    mask = np.array([[True, True, False]])
    with pytest.raises(jdlm.InputError, match="left-padded"):
        jdlm.decode(params, np.array([[3, 4, 1]]), S.llada(gen_length=8, steps=8, block_length=8), prompt_mask=mask)


# ---------------------------------------------------------------- the while_loop equals a Python loop over `step`

RULES = {"low_confidence": S.LowConfidence(), "random": S.RandomOrder(), "maskgit_plus": S.MaskGitPlus(),
         "margin": S.Margin(alg_temp=0.5), "entropy": S.Entropy(top_p=0.9), "threshold": S.Threshold(threshold=0.5),
         "factor": S.Factor(factor=2.0)}
CACHES = {"none": S.NoCache(), "prefix": S.PrefixCache(), "dual": S.DualCache()}


@pytest.fixture(scope="module")
def small_params():
    cfg = jdlm.tiny(n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, head_dim=16, mlp_hidden=64)
    return jdlm.init_params(cfg, jax.random.key(3), std=0.3)


def python_loop(params, prompt, strategy, key):
    """The plainest driver of the module-level step functions: a Python while loop around a jitted `step` (jitted
    only to keep the test fast; op by op it gives the same tokens, 5x slower)."""
    from jdlm.decoding import loop

    args = loop._arguments(params, prompt, strategy, key, None)
    inputs, state = loop.init_state(*args)
    strategy = args[4]
    step = jax.jit(loop.step)
    while bool(loop.running(state, strategy)):
        state = step(inputs, state, strategy)
    return loop.result(state, prompt.shape[1])


@pytest.mark.parametrize("rule, cache, guided, eos_stop", [
    (r, c, g, e) for (r, c), (g, e) in zip(itertools.product(RULES, CACHES), itertools.cycle(
        itertools.product([False, True], [False, True])))
] + [("origin", "none", False, False)])
def test_while_loop_equals_python_loop_over_step(small_params, rule, cache, guided, eos_stop):
    if rule == "origin":
        strategy = S.dream(max_new_tokens=8, steps=4, alg="origin", temperature=0.5)
    else:
        schedule = jdlm.Schedule(gen_length=8, block_length=4, steps=4, temperature=0.6, stop_at_eos=eos_stop)
        strategy = jdlm.Strategy(schedule=schedule, rule=RULES[rule], cache=CACHES[cache],
                                 guidance=S.Guidance(cfg_scale=0.5) if guided else None)
    prompt, key = _prompt(2, seed=4, length=3), jax.random.key(11)
    compiled = jdlm.decode(small_params, prompt, strategy, key=key)
    stepped = python_loop(small_params, prompt, strategy, key)
    np.testing.assert_array_equal(np.asarray(compiled.tokens), np.asarray(stepped.tokens))
    np.testing.assert_array_equal(np.asarray(compiled.nfe), np.asarray(stepped.nfe))
    np.testing.assert_array_equal(np.asarray(compiled.trace.step), np.asarray(stepped.trace.step))


def test_decode_steps_yields_every_forward_and_ends_at_decode(small_params):
    strategy = S.fast_dllm(gen_length=8, block_length=4, threshold=0.5, cache="dual")
    prompt = _prompt(2, seed=5, length=3)
    final = jdlm.decode(small_params, prompt, strategy)
    partial = list(jdlm.decoding.decode_steps(small_params, prompt, strategy))
    assert len(partial) == int(final.forwards)
    masked = [int((np.asarray(p.tokens) == MASK).sum()) for p in partial]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0
    np.testing.assert_array_equal(np.asarray(partial[-1].tokens), np.asarray(final.tokens))
    np.testing.assert_array_equal(np.asarray(partial[-1].nfe), np.asarray(final.nfe))
