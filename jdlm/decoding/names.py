"""The one table of strategy part names: what the CLI, eval, bench, lm-eval and the JSON files call each part.

Adding a rule, a cache or a commit part is its file plus one line here. This module imports nothing heavy, so `jdlm --help` can
list the names without loading JAX; `load()` imports a part's class when it is needed.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Name:
    """One named part. `value`: the field that `NAME:VALUE` sets (e.g. threshold:0.9), or None."""

    name: str
    target: str  # "module:Class"
    help: str
    value: str | None = None

    def load(self) -> type:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)

    @property
    def spelling(self) -> str:
        """How the help shows it: `threshold:T`, `entropy[:A]`, `random`."""
        if self.value is None:
            return self.name
        letter = self.value[0].upper() if self.value != "alg_temp" else "A"
        return f"{self.name}:{letter}" if self.value in REQUIRED_VALUES else f"{self.name}[:{letter}]"


REQUIRED_VALUES = ("threshold", "factor")  # fields that `NAME:VALUE` should state (the defaults are arbitrary)

RULES = {n.name: n for n in (
    Name("low_confidence", "jdlm.decoding.low_confidence:LowConfidence",
         "the most probable proposals, a fixed count per step (LLaDA)"),
    Name("random", "jdlm.decoding.random_order:RandomOrder", "random positions (LLaDA)"),
    Name("threshold", "jdlm.decoding.threshold:Threshold",
         "every proposal with probability >= T, at least one (Fast-dLLM), e.g. threshold:0.9", "threshold"),
    Name("factor", "jdlm.decoding.factor:Factor", "Fast-dLLM's rank-dependent threshold, e.g. factor:1", "factor"),
    Name("maskgit_plus", "jdlm.decoding.maskgit_plus:MaskGitPlus", "Dream's top-1 probability rule (A: alg_temp)",
         "alg_temp"),
    Name("margin", "jdlm.decoding.margin:Margin", "Dream's top-1 minus top-2 rule", "alg_temp"),
    Name("entropy", "jdlm.decoding.entropy:Entropy", "Dream's negative-entropy rule", "alg_temp"),
    Name("dawn", "jdlm.decoding.dawn:Dawn",
         "dependency-aware: confident tokens, tokens their revealed context supports, and an independent set of "
         "the rest by attention (DAWN)"),
    Name("axon", "jdlm.decoding.axon:Axon",
         "a base rule (base=dawn, or base=threshold:0.9, ...) that reveals anchor tokens when its progress looks "
         "stuck (AXON)"),
    Name("wino", "jdlm.decoding.wino:Wino",
         "revocable: draft every proposal with probability > T, re-mask decoded tokens that the block's shadow "
         "twins doubt (WINO), e.g. wino:0.6 threshold_back=0.9", "threshold"),
    Name("asrd", "jdlm.decoding.asrd:Asrd",
         "revocable with anchors: WINO plus temporally consistent anchor tokens that guide the masked inputs and "
         "are never re-masked, and perturbed verification (ASRD, jdlm's design), e.g. asrd:0.6", "threshold"),
    Name("origin", "jdlm.decoding.origin:Origin",
         "Dream's alg=origin: each masked position revealed with probability 1 - s/t (with the fields "
         "counts=dream keep_idle_steps=true)"),
)}

CACHES = {n.name: n for n in (
    Name("none", "jdlm.decoding.cache:NoCache", "exact: a full forward every step"),
    Name("prefix", "jdlm.decoding.prefix_cache:PrefixCache",
         "reuse keys/values left of the block, recompute the block and what follows"),
    Name("dual", "jdlm.decoding.dual_cache:DualCache", "reuse the whole sequence, recompute only the block"),
    Name("freecache", "jdlm.decoding.freecache:FreeCache",
         "never recompute a frozen prefix (FlashDLM); P: prompt, block (default), boundary or window, e.g. "
         "freecache:window or freecache:policy=window,window=64", "policy"),
)}

GUIDES = {n.name: n for n in (
    Name("ar", "jdlm.decoding.ar_guide:ARGuide",
         "a causal model on the same tokenizer verifies the drafts left to right and cuts the reveals at its first "
         "disagreement (FlashDLM); its weights are passed to decode(guide=...) / --guide"),
)}

COMMITS = {n.name: n for n in (
    Name("prophet", "jdlm.decoding.prophet:Prophet",
         "commit every masked position at once when the answer region's top-1/top-2 logit gap is wide (Prophet)"),
)}


def rule_help(indent: str = "  ", table: dict[str, Name] | None = None) -> str:
    """The rules (or another table's parts), one per line, for --help."""
    table = RULES if table is None else table
    width = max(len(n.spelling) for n in table.values()) + 2
    return "\n".join(f"{indent}{n.spelling:<{width}}{n.help}" for n in table.values())


def name_of(part, table: dict[str, Name]) -> str:
    """The table name of a part's class ('threshold' for a Threshold)."""
    target = f"{type(part).__module__}:{type(part).__name__}"
    for n in table.values():
        if n.target == target:
            return n.name
    raise KeyError(f"{type(part).__name__} has no name in jdlm.decoding.names; add a line for it there")
