"""Strategy: a schedule, a reveal rule, a cache and optional guidance, composed; plus parsing by name."""

from __future__ import annotations

import dataclasses

from jdlm.cache import DualCache, NoCache, PrefixCache
from jdlm.decoding.entropy import Entropy
from jdlm.decoding.factor import Factor
from jdlm.decoding.guidance import Guidance
from jdlm.decoding.low_confidence import LowConfidence
from jdlm.decoding.margin import Margin
from jdlm.decoding.maskgit_plus import MaskGitPlus
from jdlm.decoding.random_order import RandomOrder
from jdlm.decoding.rule import Rule
from jdlm.decoding.schedule import Schedule, StrategyError
from jdlm.decoding.threshold import Threshold

CACHES = (NoCache, PrefixCache, DualCache)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Strategy:
    """Everything `decode` needs to know besides the weights and the prompt. Frozen and hashable: it is a static
    argument of the compiled decode, so two equal strategies share one compilation.

    Any rule composes with any cache and with guidance.
    """

    schedule: Schedule = Schedule()
    rule: Rule = LowConfidence()
    cache: NoCache | PrefixCache | DualCache = NoCache()
    guidance: Guidance | None = None

    def __post_init__(self):
        if not isinstance(self.schedule, Schedule):
            raise StrategyError(f"schedule must be a jdlm Schedule, got {type(self.schedule).__name__}")
        if not isinstance(self.rule, Rule):
            raise StrategyError(f"rule must be one of {sorted(RULES)} (a jdlm Rule), got {self.rule!r}")
        if not isinstance(self.cache, CACHES):
            raise StrategyError(f"cache must be one of {sorted(CACHE_NAMES)}, got {self.cache!r}")
        if self.guidance is not None and not isinstance(self.guidance, Guidance):
            raise StrategyError(f"guidance must be a jdlm Guidance or None, got {self.guidance!r}")

    def replace(self, **changes) -> "Strategy":
        """A copy with some parts replaced; schedule fields may be given directly (`steps=64`)."""
        schedule_fields = {f.name for f in dataclasses.fields(Schedule)}
        sched = {k: changes.pop(k) for k in list(changes) if k in schedule_fields}
        if sched:
            changes["schedule"] = dataclasses.replace(changes.get("schedule", self.schedule), **sched)
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------- presets mirroring the references


def llada(*, gen_length=128, steps=128, block_length=32, temperature=0.0, cfg_scale=0.0,
          remasking="low_confidence") -> Strategy:
    """ML-GSAI/LLaDA `generate(...)` with the same arguments (NFE = steps; idle steps are run)."""
    rules = {"low_confidence": LowConfidence(), "random": RandomOrder()}
    if remasking not in rules:
        raise StrategyError(f"remasking must be one of {sorted(rules)}, got {remasking!r}")
    return Strategy(schedule=Schedule(gen_length=gen_length, block_length=block_length, steps=steps,
                                      temperature=temperature, keep_idle_steps=True),
                    rule=rules[remasking], guidance=Guidance(cfg_scale=cfg_scale) if cfg_scale else None)


def dream(*, max_new_tokens=128, steps=128, eps=1e-3, alg="entropy", alg_temp=0.0, temperature=0.0, top_p=None,
          top_k=None) -> Strategy:
    """HKUNLP Dream `diffusion_generate(...)` with the same arguments (one block; NFE = steps)."""
    algs = {"maskgit_plus": MaskGitPlus, "topk_margin": Margin, "entropy": Entropy}
    if alg not in algs:
        raise StrategyError(f"alg must be one of {sorted(algs)}, got {alg!r}")
    return Strategy(schedule=Schedule(gen_length=max_new_tokens, block_length=None, steps=steps,
                                      temperature=temperature, counts="dream", eps=eps, keep_idle_steps=True),
                    rule=algs[alg](alg_temp=alg_temp, top_p=top_p, top_k=top_k))


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
    rule = Threshold(threshold=threshold) if threshold is not None else \
        Factor(factor=factor) if factor is not None else LowConfidence()
    return Strategy(schedule=Schedule(gen_length=gen_length, block_length=block_length, steps=steps or gen_length,
                                      temperature=temperature, first_token_at_block_start=family == "dream"),
                    rule=rule, cache=parse_cache(cache))


# ---------------------------------------------------------------- parsing names (CLI, configs)

RULES = {"low_confidence": LowConfidence, "random": RandomOrder, "maskgit_plus": MaskGitPlus, "margin": Margin,
         "entropy": Entropy, "threshold": Threshold, "factor": Factor}
RULE_ARG = {"threshold": "threshold", "factor": "factor", "maskgit_plus": "alg_temp", "margin": "alg_temp",
            "entropy": "alg_temp"}
CACHE_NAMES = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache}


def parse_rule(spec: str) -> Rule:
    """"threshold:0.9", "factor:1", "low_confidence", "entropy", "random" ... -> a Rule."""
    name, _, arg = spec.partition(":")
    name = name.strip().lower().replace("-", "_")
    if name not in RULES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(sorted(RULES))} "
                            "(e.g. --strategy threshold:0.9)")
    if not arg:
        return RULES[name]()
    if name not in RULE_ARG:
        raise StrategyError(f"strategy {name!r} takes no value (got {spec!r})")
    try:
        value = float(arg)
    except ValueError:
        raise StrategyError(f"strategy {name!r} needs a number after ':', got {arg!r}") from None
    return RULES[name](**{RULE_ARG[name]: value})


def parse_cache(name: str):
    key = (name or "none").strip().lower()
    if key not in CACHE_NAMES:
        raise StrategyError(f"unknown cache {name!r}; choose one of {', '.join(CACHE_NAMES)}")
    return CACHE_NAMES[key]()
