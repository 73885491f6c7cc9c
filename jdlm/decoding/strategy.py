"""Strategy: a schedule, a reveal rule, a cache, optional guidance and an optional commit part, composed; its spec
string and JSON form."""

from __future__ import annotations

import dataclasses
import math

from jdlm.decoding import names
from jdlm.decoding.cache import NoCache
from jdlm.decoding.commit import Commit
from jdlm.decoding.guidance import Guidance
from jdlm.decoding.low_confidence import LowConfidence
from jdlm.decoding.part import child, knob_names, part
from jdlm.decoding.rule import Rule
from jdlm.decoding.schedule import Schedule
from jdlm.errors import StrategyError


@part
class Strategy:
    """Everything `decode` needs to know besides the weights and the prompt. Frozen and hashable; a pytree whose
    leaves are the parts' numeric knobs, so two strategies that differ only in knob values share one compilation.

    Any rule composes with any cache, with guidance and with any commit part (early all-in commit, e.g. Prophet;
    None: none). A proposer (`jdlm.joint.JointSampler`: k rounds of reveals per full forward, with a trained head)
    composes with any cache and any rule that does not read attention, without guidance or a commit part; it holds
    weights, so the text and JSON forms only name it (`joint:K`) and cannot rebuild it. Text form: `spec` /
    `parse_strategy`; JSON form: `to_dict` / `from_dict`.
    """

    schedule: Schedule = child(Schedule())
    rule: Rule = child(LowConfidence())
    cache: object = child(NoCache())
    guidance: Guidance | None = child(None)
    commit: Commit | None = child(None)
    proposer: object | None = child(None)
    guide: object = child(None)  # an ARGuide (its weights go to decode(guide=...)), or None

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule):
            raise StrategyError(f"schedule must be a jdlm Schedule, got {type(self.schedule).__name__}")
        if not isinstance(self.rule, Rule):
            raise StrategyError(f"rule must be one of {', '.join(names.RULES)} (a jdlm Rule), got {self.rule!r}")
        try:
            names.name_of(self.cache, names.CACHES)
        except KeyError:
            raise StrategyError(f"cache must be one of {', '.join(names.CACHES)}, got {self.cache!r}") from None
        if self.guidance is not None and not isinstance(self.guidance, Guidance):
            raise StrategyError(f"guidance must be a jdlm Guidance or None, got {self.guidance!r}")
        if self.commit is not None:
            try:
                names.name_of(self.commit, names.COMMITS)
            except KeyError:
                raise StrategyError(f"commit must be None or one of {', '.join(names.COMMITS)}, "
                                    f"got {self.commit!r}") from None
            self.commit.check_schedule(self.schedule)
        if self.guide is not None:
            try:
                names.name_of(self.guide, names.GUIDES)
            except KeyError:
                raise StrategyError(f"guide must be None or an ARGuide, got {self.guide!r}") from None
            if self.schedule.keep_idle_steps:
                raise StrategyError("an AR guide ends a block when it is full: set keep_idle_steps=false")
        self.rule.check_strategy(self)
        self.rule.check_schedule(self.schedule)
        if self.proposer is not None:
            if not hasattr(self.proposer, "later_rounds"):
                raise StrategyError(f"proposer must be a jdlm.joint.JointSampler or None, got {self.proposer!r}")
            if self.guidance is not None or self.commit is not None or self.guide is not None:
                raise StrategyError("a joint sampler runs without guidance (cfg_scale), a commit part or an AR guide")

    def replace(self, **changes) -> "Strategy":
        """A copy with some parts replaced; schedule fields may be given directly (`steps=64`)."""
        schedule_fields = {f.name for f in dataclasses.fields(Schedule) if f.init}
        sched = {k: changes.pop(k) for k in list(changes) if k in schedule_fields}
        if sched:
            changes["schedule"] = dataclasses.replace(changes.get("schedule", self.schedule), **sched)
        return dataclasses.replace(self, **changes)

    def for_model(self, config) -> "Strategy":
        """The strategy with what the rule needs to know of the model (its special token ids) filled in."""
        rule = self.rule.for_model(config)
        if self.proposer is not None:
            self.proposer.check(rule, config)
        return self if rule is self.rule else dataclasses.replace(self, rule=rule)

    # ------------------------------------------------------------ text and JSON forms

    @property
    def spec(self) -> str:
        """The strategy as one line that `parse_strategy` reads back: the rule (`threshold:0.9`), the cache and
        the commit part when there are, then `field=value` for every other field that differs from its default."""
        words = rule_spec(self.rule).split()
        head = [n for n in (names.name_of(self.cache, names.CACHES),
                            self.commit and names.name_of(self.commit, names.COMMITS)) if n and n != "none"]
        if self.guide is not None:
            head.append("guide")
        words[1:1] = head
        fields = {**_changed(self.schedule), **_changed(self.cache), **(_changed(self.commit) if self.commit else {}),
                  **(_changed(self.guide) if self.guide else {})}
        if self.guidance is not None:
            fields["cfg_scale"] = self.guidance.cfg_scale
        proposer = [f"joint:{self.proposer.k}"] if self.proposer is not None else []
        return " ".join(words + [f"{k}={_text(v)}" for k, v in fields.items()] + proposer)

    def to_dict(self) -> dict:
        """JSON-ready: {"rule": {"name": ..., fields}, "cache": {...}, "schedule": {...}, "guidance": {...} | None,
        "commit": {"name": ..., fields} | None}, and "proposer": {"name": "joint", "k": K} when there is one."""
        def fields(p):
            return {f.name: _json(getattr(p, f.name)) for f in dataclasses.fields(p) if f.init}
        return {"rule": {"name": names.name_of(self.rule, names.RULES), **fields(self.rule)},
                "cache": {"name": names.name_of(self.cache, names.CACHES), **fields(self.cache)},
                "schedule": fields(self.schedule),
                "guidance": None if self.guidance is None else fields(self.guidance),
                "commit": None if self.commit is None else
                {"name": names.name_of(self.commit, names.COMMITS), **fields(self.commit)},
                "guide": None if self.guide is None else
                {"name": names.name_of(self.guide, names.GUIDES), **fields(self.guide)}} | \
            ({} if self.proposer is None else {"proposer": {"name": "joint", "k": self.proposer.k}})

    @classmethod
    def from_dict(cls, d: dict) -> "Strategy":
        """Inverse of `to_dict`; unknown names and fields are StrategyErrors. A missing "commit" is None."""
        if d.get("proposer") is not None:
            raise StrategyError(_NEEDS_HEAD)
        try:
            rule = _build(names.RULES, dict(d["rule"]), "rule")
            cache = _build(names.CACHES, dict(d["cache"]), "cache")
            schedule = _make(Schedule, d["schedule"], "schedule")
            guidance = None if d.get("guidance") is None else _make(Guidance, d["guidance"], "guidance")
            commit = None if d.get("commit") is None else _build(names.COMMITS, dict(d["commit"]), "commit")
            guide = None if d.get("guide") is None else _build(names.GUIDES, dict(d["guide"]), "guide")
        except (KeyError, TypeError) as e:
            raise StrategyError(f"not a strategy in JSON form (Strategy.to_dict): missing or bad {e}") from None
        return cls(schedule=schedule, rule=rule, cache=cache, guidance=guidance, commit=commit, guide=guide)


_NEEDS_HEAD = ("a joint sampler needs its trained head, which a strategy's text or JSON form does not hold: build "
               "it in Python, Strategy(..., proposer=jdlm.joint.JointSampler.load(HEAD_DIR, k=K))")


def parse_strategy(spec: str, base: Strategy | None = None) -> Strategy:
    """Reads a spec string (`Strategy.spec`) into a Strategy.

    `RULE[:VALUE] [CACHE] [COMMIT] [field=value ...]`: e.g. "threshold:0.9 dual", "entropy:0.1 top_p=0.9 steps=64",
    "low_confidence prefix gen_length=128 block_length=32 cfg_scale=1.5", "low_confidence prophet late_gap=3".
    The cache and the commit part may also be given as `cache=NAME`, `commit=NAME` (`commit=none`: none). Fields
    belong to the rule, the cache, the commit part or the schedule; `cfg_scale` adds guidance. Whatever the spec
    does not say comes from `base` (default `Strategy()`): its schedule and guidance are kept, its rule, cache and
    commit part are replaced.
    """
    words = spec.split()
    if not words:
        raise StrategyError("empty strategy; e.g. 'threshold:0.9 dual' or 'low_confidence'")
    base = base or Strategy()
    rule_fields = _rule_word(words[0])
    rule_name = rule_fields.pop("name")
    rule_cls = names.RULES[rule_name].load()
    cache_name, commit_name, part_fields, sched_fields, guidance = "none", None, {}, {}, base.guidance
    guide_name = None
    for word in words[1:]:
        if word.lower().startswith("joint"):
            raise StrategyError(_NEEDS_HEAD)
        if word.lower() == "guide" or word.lower().startswith("guide="):
            guide_name = _guide_word(word)
            continue
        word, options = _cache_word(word)
        part_fields.update(options)
        key, eq, value = word.partition("=")
        if not eq:
            key, value = ("commit" if word.lower() in names.COMMITS else "cache"), word
            if word.lower() not in names.CACHES and word.lower() not in names.COMMITS:
                raise StrategyError(f"cannot read {word!r} in strategy {spec!r}: a cache ({', '.join(names.CACHES)}), "
                                    f"a commit part ({', '.join(names.COMMITS)}) or field=value")
        if key == "cache":
            if value.lower() not in names.CACHES:
                raise StrategyError(f"unknown cache {value!r}; choose one of {', '.join(names.CACHES)}")
            cache_name = value.lower()
        elif key == "commit":
            if value.lower() not in (*names.COMMITS, "none"):
                raise StrategyError(f"unknown commit part {value!r}; choose one of {', '.join(names.COMMITS)} or none")
            commit_name = None if value.lower() == "none" else value.lower()
        elif key == "cfg_scale":
            number = _value(value, key)
            guidance = Guidance(cfg_scale=number) if number else None
        elif key in _init_fields(rule_cls):
            rule_fields[key] = _value(value, key)
        elif key in _init_fields(Schedule):
            sched_fields[key] = _value(value, key)
        else:
            part_fields[key] = _value(value, key)  # the cache's or the commit part's, once both are known
    cache_cls = names.CACHES[cache_name].load()
    commit_cls = names.COMMITS[commit_name].load() if commit_name else None
    guide_cls = names.GUIDES[guide_name].load() if guide_name else None
    commit_fields = {k: v for k, v in part_fields.items() if commit_cls and k in _init_fields(commit_cls)}
    guide_fields = {k: v for k, v in part_fields.items() if guide_cls and k in _init_fields(guide_cls)}
    cache_fields = {k: v for k, v in part_fields.items() if k not in commit_fields and k not in guide_fields}
    unknown = [k for k in cache_fields if k not in _init_fields(cache_cls)]
    if unknown:
        allowed = sorted(_init_fields(rule_cls) | _init_fields(Schedule) | _init_fields(cache_cls) | {"cfg_scale"} |
                         (_init_fields(commit_cls) if commit_cls else set()) |
                         (_init_fields(guide_cls) if guide_cls else set()))
        owner = [n.name for n in names.COMMITS.values() if unknown[0] in _init_fields(n.load())]
        hint = f" ({unknown[0]} belongs to the commit part {owner[0]}: add the word {owner[0]})" if owner else ""
        raise StrategyError(f"unknown field {unknown[0]!r} in strategy {spec!r} (with rule {rule_name} and cache "
                            f"{cache_name}){hint}; fields: {', '.join(allowed)}")
    schedule = dataclasses.replace(base.schedule, **sched_fields) if sched_fields else base.schedule
    return Strategy(schedule=schedule, rule=_make(rule_cls, rule_fields, rule_name),
                    cache=_make(cache_cls, cache_fields, cache_name), guidance=guidance,
                    commit=_make(commit_cls, commit_fields, commit_name) if commit_cls else None,
                    guide=_make(guide_cls, guide_fields, guide_name) if guide_cls else None)


def rule_spec(rule: Rule) -> str:
    """A rule as spec words: "threshold:0.9", "low_confidence", "entropy:0.5 top_p=0.9"; `parse_rule` reads it."""
    name = names.name_of(rule, names.RULES)
    value = names.RULES[name].value
    fields = _changed(rule)
    if value is not None and (value in fields or value in names.REQUIRED_VALUES):
        name += f":{_text(getattr(rule, value))}"
        fields.pop(value, None)
    return " ".join([name] + [f"{k}={_text(v)}" for k, v in fields.items()])


def parse_rule(text: str) -> Rule:
    """"threshold:0.9", "factor:1", "low_confidence", "entropy:0.5 top_p=0.9", "random" ... -> a Rule."""
    words = text.split()
    if not words:
        raise StrategyError("empty rule; e.g. 'threshold:0.9' or 'low_confidence'")
    fields = _rule_word(words[0])
    name = fields.pop("name")
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq:
            raise StrategyError(f"cannot read {word!r} in rule {text!r}: give field=value")
        fields[key] = _value(value, key)
    return _make(names.RULES[name].load(), fields, name)


def parse_cache(name: str):
    """"none", "prefix", "dual", "freecache", "freecache:window", "freecache:policy=boundary,unit=16" -> a cache."""
    word, fields = _cache_word((name or "none").strip())
    key = word.lower()
    if key not in names.CACHES:
        raise StrategyError(f"unknown cache {name!r}; choose one of {', '.join(names.CACHES)}")
    return _make(names.CACHES[key].load(), fields, key)


# ---------------------------------------------------------------- presets mirroring the references


def llada(*, gen_length=128, steps=128, block_length=32, temperature=0.0, cfg_scale=0.0,
          remasking="low_confidence", logits_eos_inf=False, confidence_eos_eot_inf=False) -> Strategy:
    """ML-GSAI/LLaDA `generate(...)` with the same arguments (NFE = steps; idle steps are run)."""
    if remasking not in ("low_confidence", "random"):
        raise StrategyError(f"remasking must be 'low_confidence' or 'random', got {remasking!r}")
    rule = names.RULES[remasking].load()(logits_eos_inf=logits_eos_inf,
                                          confidence_eos_eot_inf=confidence_eos_eot_inf)
    return Strategy(schedule=Schedule(gen_length=gen_length, block_length=block_length, steps=steps,
                                      temperature=temperature, keep_idle_steps=True),
                    rule=rule, guidance=Guidance(cfg_scale=cfg_scale) if cfg_scale else None)


def dream(*, max_new_tokens=128, steps=128, eps=1e-3, alg="entropy", alg_temp=0.0, temperature=0.0, top_p=None,
          top_k=None) -> Strategy:
    """HKUNLP Dream `diffusion_generate(...)` with the same arguments (one block; NFE = steps)."""
    algs = {"maskgit_plus": "maskgit_plus", "topk_margin": "margin", "entropy": "entropy", "origin": "origin"}
    if alg not in algs:
        raise StrategyError(f"alg must be one of {', '.join(algs)}, got {alg!r}")
    rule_cls = names.RULES[algs[alg]].load()
    options = {"top_p": top_p, "top_k": top_k} | ({} if alg == "origin" else {"alg_temp": alg_temp})
    return Strategy(schedule=Schedule(gen_length=max_new_tokens, block_length=None, steps=steps,
                                      temperature=temperature, counts="dream", eps=eps, keep_idle_steps=True),
                    rule=rule_cls(**options))


def fast_dllm(*, gen_length=256, block_length=32, steps=None, threshold=None, factor=None, cache="none",
              temperature=0.0, family="llada") -> Strategy:
    """NVlabs/Fast-dLLM: threshold or factor parallel decoding (or LLaDA counts when neither is set), with no
    cache, a prefix cache or a dual cache. family="dream" is Fast-dLLM's Dream block sampler: every block opens
    by revealing its first position alone (threshold rule only)."""
    if family not in ("llada", "dream"):
        raise StrategyError(f"family must be 'llada' or 'dream', got {family!r}")
    if family == "dream" and threshold is None:
        raise StrategyError("Fast-dLLM's Dream sampler uses the threshold rule: give threshold=...")
    if threshold is not None and factor is not None:
        raise StrategyError("give threshold or factor, not both")
    rule = parse_rule(f"threshold:{threshold}") if threshold is not None else \
        parse_rule(f"factor:{factor}") if factor is not None else LowConfidence()
    return Strategy(schedule=Schedule(gen_length=gen_length, block_length=block_length, steps=steps or gen_length,
                                      temperature=temperature, first_token_at_block_start=family == "dream"),
                    rule=rule, cache=parse_cache(cache))


# ---------------------------------------------------------------- helpers


def _init_fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _changed(p) -> dict:
    """The init fields of a part that differ from its class defaults."""
    default = type(p)()
    return {f.name: getattr(p, f.name) for f in dataclasses.fields(p)
            if f.init and getattr(p, f.name) != getattr(default, f.name)}


def _json(value):
    """A field value in JSON form: a nested rule (Axon's base) as {"name": ..., fields}."""
    if isinstance(value, Rule):
        return {"name": names.name_of(value, names.RULES),
                **{f.name: _json(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}}
    return value


def _text(value) -> str:
    if isinstance(value, Rule):  # Axon's base: its rule spec as one word, fields after commas
        return rule_spec(value).replace(" ", ",")
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else f"{value:g}"
    return str(value)


def _value(text: str, field: str):
    """A field value from a spec: none, true/false, an integer, a number, or a word."""
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        raise StrategyError(f"{field}={text}: give a finite number")
    return number


def _cache_word(word: str) -> tuple[str, dict]:
    """"freecache:window" -> ("freecache", {"policy": "window"}); "cache=freecache:policy=window,window=64" ->
    ("cache=freecache", {...}); any other word unchanged, with no fields."""
    head, colon, options = word.partition(":")
    name = head.partition("=")[2] if head.lower().startswith("cache=") else head
    entry = names.CACHES.get(name.lower())
    if not colon or entry is None:
        return word, {}
    fields = {}
    for option in options.split(","):
        key, eq, value = option.partition("=")
        if not eq:
            if entry.value is None:
                raise StrategyError(f"cache {name!r} takes no value (got {word!r})")
            key, value = entry.value, option
        fields[key] = _value(value, key)
    return head, fields


def _guide_word(word: str) -> str:
    """"guide" or "guide=ar" -> the guide's table name."""
    name = word.partition("=")[2].lower() or "ar"
    if name not in names.GUIDES:
        raise StrategyError(f"unknown guide {name!r}; choose one of {', '.join(names.GUIDES)}")
    return name


def _rule_word(word: str) -> dict:
    """"threshold:0.9" -> {"name": "threshold", "threshold": 0.9}."""
    name, _, arg = word.partition(":")
    name = name.strip().lower().replace("-", "_")
    if name not in names.RULES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(names.RULES)} "
                            "(e.g. --strategy threshold:0.9)")
    value_field = names.RULES[name].value
    if not arg:
        return {"name": name}
    if value_field is None:
        raise StrategyError(f"strategy {name!r} takes no value (got {word!r})")
    try:
        value = float(arg)
    except ValueError:
        raise StrategyError(f"strategy {name!r} needs a number after ':', got {arg!r}") from None
    if not math.isfinite(value):
        raise StrategyError(f"strategy {name!r} needs a finite number after ':', got {arg!r}")
    return {"name": name, value_field: value}


def _make(cls, fields: dict, what: str):
    fields = {k: _build(names.RULES, dict(v), k) if isinstance(v, dict) else v for k, v in fields.items()}
    allowed = _init_fields(cls)
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise StrategyError(f"{what} has no field {unknown[0]!r}; its fields: {', '.join(sorted(allowed)) or 'none'}")
    for k in knob_names(cls) & set(fields):
        v = fields[k]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise StrategyError(f"{what}: {k} must be a number, got {v!r}")
    return cls(**fields)


def _build(table, d: dict, what: str):
    name = d.pop("name")
    if name not in table:
        raise StrategyError(f"unknown {what} {name!r}; choose one of {', '.join(table)}")
    return _make(table[name].load(), d, name)
