"""The one name table: every rule and cache has a name, and a strategy's spec string and JSON form rebuild it."""

import json

import pytest

from jdlm import strategies as S
from jdlm.decoding import names

# One non-default setting of every part (a new rule or cache must be added here, or the coverage test fails).
RULES = {
    "low_confidence": S.LowConfidence(logits_eos_inf=True),
    "random": S.RandomOrder(confidence_eos_eot_inf=True),
    "threshold": S.Threshold(threshold=0.85),
    "factor": S.Factor(factor=1.5),
    "maskgit_plus": S.MaskGitPlus(alg_temp=0.3, top_p=0.9),
    "margin": S.Margin(top_k=5),
    "entropy": S.Entropy(alg_temp=0.1, top_p=0.8, top_k=3),
    "origin": S.Origin(top_p=0.95),
    "dawn": S.Dawn(sure=0.8),
    "axon": S.Axon(selector="cover", exit_confidence=0.8),
    "wino": S.Wino(threshold=0.5, max_revocations=3),
    "asrd": S.Asrd(threshold=0.7, anchor_window=4, perturbation=0.2),
}
CACHES = {"none": S.NoCache(), "prefix": S.PrefixCache(refresh_every=3, windows=3), "dual": S.DualCache(refresh_every=2),
          "freecache": S.FreeCache(policy="window", window=64, refresh_every=3)}


def test_every_name_is_covered_here_and_points_at_its_class():
    assert set(RULES) == set(names.RULES) and set(CACHES) == set(names.CACHES)
    for name, part in {**RULES, **CACHES}.items():
        table = names.RULES if name in names.RULES else names.CACHES
        assert type(part) is table[name].load() and names.name_of(part, table) == name


def _strategy(rule_name, cache_name, guided):
    counts = dict(counts="dream", keep_idle_steps=True) if rule_name == "origin" else {}
    schedule = S.Schedule(gen_length=64, block_length=16, steps=32, temperature=0.7, stop_at_eos=True, **counts)
    return S.Strategy(schedule=schedule, rule=RULES[rule_name], cache=CACHES[cache_name],
                      guidance=S.Guidance(cfg_scale=1.5) if guided else None)


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("cache", list(CACHES))
def test_spec_and_json_round_trip(rule, cache):
    for guided in (False, True):
        if RULES[rule].revocable and (guided or cache != "none"):  # WINO and ASRD need the plain full forward
            with pytest.raises(S.StrategyError, match="revocable rules"):
                _strategy(rule, cache, guided)
            continue
        strategy = _strategy(rule, cache, guided)
        assert S.parse_strategy(strategy.spec) == strategy, strategy.spec
        assert S.Strategy.from_dict(json.loads(json.dumps(strategy.to_dict()))) == strategy


@pytest.mark.parametrize("spec, expected", [
    ("threshold:0.9 dual", S.Strategy(rule=S.Threshold(threshold=0.9), cache=S.DualCache())),
    ("low_confidence", S.Strategy()),
    ("entropy:0.5 top_p=0.9 prefix", S.Strategy(rule=S.Entropy(alg_temp=0.5, top_p=0.9), cache=S.PrefixCache())),
    ("threshold:0.7 cache=dual refresh_every=4 gen_length=64 block_length=16",
     S.Strategy(schedule=S.Schedule(gen_length=64, block_length=16), rule=S.Threshold(threshold=0.7),
                cache=S.DualCache(refresh_every=4))),
    ("random cfg_scale=2", S.Strategy(rule=S.RandomOrder(), guidance=S.Guidance(cfg_scale=2.0))),
])
def test_specs_read_as_written(spec, expected):
    assert S.parse_strategy(spec) == expected


def test_spec_keeps_what_the_base_strategy_says():
    base = S.Strategy(schedule=S.Schedule(gen_length=48, block_length=16, steps=48), guidance=S.Guidance(cfg_scale=1))
    strategy = S.parse_strategy("factor:2 dual", base)
    assert strategy.schedule == base.schedule and strategy.guidance == base.guidance
    assert strategy.rule == S.Factor(factor=2.0) and strategy.cache == S.DualCache()


@pytest.mark.parametrize("spec, match", [
    ("", "empty strategy"),
    ("speculative:3", "unknown strategy 'speculative'"),
    ("threshold:0.9 turbo", "cannot read 'turbo'"),
    ("threshold:0.9 cache=paged", "unknown cache 'paged'"),
    ("threshold:0.9 windows=2", "unknown field 'windows'"),  # a prefix-cache field without the prefix cache
    ("low_confidence:3", "takes no value"),
    ("threshold:0.9 threshold=high", "must be a number"),
    ("entropy top_k=0", "top_k must be a positive integer"),
])
def test_bad_specs_say_what_is_wrong(spec, match):
    with pytest.raises(S.StrategyError, match=match):
        S.parse_strategy(spec)


def test_bad_json_says_what_is_wrong():
    with pytest.raises(S.StrategyError, match="not a strategy in JSON form"):
        S.Strategy.from_dict({"rule": {"name": "threshold"}})
    with pytest.raises(S.StrategyError, match="threshold has no field 'tau'"):
        S.Strategy.from_dict({"rule": {"name": "threshold", "tau": 0.9}, "cache": {"name": "none"}, "schedule": {}})
