"""EvalSpec: a decoding strategy described independently of any task's lengths (rule, cache, tokens per step)."""

from __future__ import annotations

import dataclasses

from jdlm.decoding import names
from jdlm.decoding.rule import Rule
from jdlm.decoding.schedule import Schedule
from jdlm.decoding.strategy import Strategy, parse_cache, parse_rule, rule_spec
from jdlm.errors import StrategyError
from jdlm.eval.settings import TaskSettings


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSpec:
    """What to evaluate: a reveal rule, a cache and a speed setting; each task supplies its own lengths.

    Attributes:
      rule: any jdlm Rule, or its name as `jdlm.strategies.parse_rule` reads it ("low_confidence",
        "threshold:0.9", "entropy", ...); a name is parsed on construction.
      cache: "none", "prefix", "dual", "freecache" or "freecache:POLICY" (`jdlm.strategies.parse_cache`).
      tokens_per_step: for rules that reveal a fixed count (counted rules), tokens revealed per step, so that
        steps = gen_length / tokens_per_step; must divide every task's block length. Rules that decide their own
        count (threshold, factor) take only 1.
      temperature: 0 is greedy.

    Evaluation decodes with `stop_at_eos=True`: a row stops once its answer has ended, which changes only tokens
    after the answer's EOS (no text shows them) and saves the forward passes a finished row would idle through.
    """

    rule: Rule | str = "low_confidence"
    cache: str = "none"
    tokens_per_step: int = 1
    temperature: float = 0.0

    def __post_init__(self):
        if isinstance(self.rule, str):
            object.__setattr__(self, "rule", parse_rule(self.rule))
        if not isinstance(self.rule, Rule):
            raise StrategyError(f"rule must be a jdlm Rule or a rule name ({', '.join(names.RULES)}), "
                                f"got {self.rule!r}")
        parse_cache(self.cache)  # raises with the allowed names
        object.__setattr__(self, "cache", self.cache.strip().lower())
        if not isinstance(self.tokens_per_step, int) or self.tokens_per_step < 1:
            raise StrategyError(f"tokens_per_step must be a positive int, got {self.tokens_per_step!r}")
        if not self.rule.counted and self.tokens_per_step != 1:
            raise StrategyError(f"{self.rule_name} decides how many tokens to reveal each step; tokens_per_step "
                                f"applies only to counted rules (got {self.tokens_per_step})")
        if not self.temperature >= 0:
            raise StrategyError(f"temperature must be >= 0, got {self.temperature}")

    @property
    def rule_name(self) -> str:
        """The rule as `parse_rule` reads it ("threshold:0.9", "low_confidence", "entropy top_p=0.9")."""
        return rule_spec(self.rule)

    @property
    def family(self) -> str:
        """The rule's kind and the cache ("threshold", "low_confidence dual"): one line of the Pareto plot."""
        kind = names.name_of(self.rule, names.RULES)
        return kind if self.cache == "none" else f"{kind} {self.cache}"

    @property
    def name(self) -> str:
        """A short readable name: "low_confidence k=2", "threshold:0.9 dual", "random k=1 T=0.7"."""
        parts = [self.rule_name]
        if self.rule.counted:
            parts.append(f"k={self.tokens_per_step}")
        if self.cache != "none":
            parts.append(self.cache)
        if self.temperature:
            parts.append(f"T={self.temperature:g}")
        return " ".join(parts)

    def strategy(self, settings: TaskSettings) -> Strategy:
        """The `jdlm.Strategy` for one task's lengths.

        steps = gen_length / tokens_per_step (the rule reveals tokens_per_step per step; uncounted rules ignore
        steps but a Schedule still needs a valid value).
        """
        G, W, k = settings.gen_length, settings.block_length, self.tokens_per_step
        if W % k:
            raise StrategyError(f"tokens_per_step ({k}) must divide the block length ({W}, gen_length {G}) so every "
                                "step reveals the same count; choose a divisor of the block length")
        schedule = Schedule(gen_length=G, block_length=W, steps=G // k, temperature=self.temperature,
                            stop_at_eos=True)
        return Strategy(schedule=schedule, rule=self.rule, cache=parse_cache(self.cache))

    def to_dict(self) -> dict:
        return {"rule": self.rule_name, "cache": self.cache, "tokens_per_step": self.tokens_per_step,
                "temperature": self.temperature}


def parse_spec(text: str) -> EvalSpec:
    """Reads the names `EvalSpec.name` writes: "threshold:0.9 dual", "low_confidence k=2 prefix", "random T=0.5",
    "entropy top_p=0.9 k=2".

    Words after the rule: "k=N" (tokens per step), a cache name, "T=x" (temperature), the rule's own field=value
    (as `jdlm.strategies.parse_rule` reads them), in any order.
    """
    words = text.split()
    if not words:
        raise StrategyError("empty strategy spec; e.g. 'low_confidence k=2' or 'threshold:0.9 dual'")
    fields: dict = {}
    rule_words = [words[0]]
    for word in words[1:]:
        key, eq, value = word.partition("=")
        try:
            if eq and key == "k":
                fields["tokens_per_step"] = int(value)
            elif eq and key == "T":
                fields["temperature"] = float(value)
            elif word.lower().partition(":")[0] in names.CACHES:  # "dual", "freecache:policy=window,window=64"
                fields["cache"] = word.lower()
            elif eq:
                rule_words.append(word)
            else:
                raise ValueError
        except ValueError:
            raise StrategyError(f"cannot read {word!r} in strategy spec {text!r}; after the rule give k=N, "
                                f"T=temperature, a cache ({', '.join(names.CACHES)}) or a rule field=value") from None
    return EvalSpec(rule=parse_rule(" ".join(rule_words)), **fields)


def describe_strategy(strategy: Strategy) -> tuple[EvalSpec, str]:
    """The EvalSpec closest to a ready-made Strategy, and a name for it.

    The name is the spec's when the spec rebuilds the strategy exactly (stop_at_eos aside); otherwise it gets a
    " (custom)" suffix: the strategy has parts a spec does not describe (guidance, Dream counts, idle steps, a step
    count that is not gen_length / k, a periodic cache refresh, ...).
    """
    sched = strategy.schedule
    cache = names.name_of(strategy.cache, names.CACHES)
    k = max(1, sched.gen_length // sched.steps) if strategy.rule.counted else 1
    spec = EvalSpec(rule=strategy.rule, cache=cache, tokens_per_step=k, temperature=sched.temperature)
    settings = TaskSettings(gen_length=sched.gen_length, block_length=sched.block_length)
    try:
        exact = spec.strategy(settings) == strategy.replace(stop_at_eos=True)
    except StrategyError:
        exact = False
    return spec, spec.name if exact else f"{spec.name} (custom)"
