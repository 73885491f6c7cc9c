"""Decoding: the compiled loop and the strategy parts it composes."""

from jdlm.cache import DualCache, NoCache, PrefixCache
from jdlm.decoding.entropy import Entropy
from jdlm.decoding.factor import Factor
from jdlm.decoding.guidance import Guidance
from jdlm.decoding.inputs import InputError, pad_prompts
from jdlm.decoding.loop import decode, trace_count
from jdlm.decoding.low_confidence import LowConfidence
from jdlm.decoding.margin import Margin
from jdlm.decoding.maskgit_plus import MaskGitPlus
from jdlm.decoding.random_order import RandomOrder
from jdlm.decoding.rule import Rule
from jdlm.decoding.schedule import Schedule, StrategyError
from jdlm.decoding.state import DecodeResult, Trace
from jdlm.decoding.strategy import Strategy, dream, fast_dllm, llada, parse_cache, parse_rule
from jdlm.decoding.threshold import Threshold

__all__ = [
    "decode", "trace_count", "DecodeResult", "Trace", "pad_prompts",
    "Strategy", "Schedule", "Guidance", "llada", "dream", "fast_dllm", "parse_rule", "parse_cache",
    "Rule", "LowConfidence", "RandomOrder", "MaskGitPlus", "Margin", "Entropy", "Threshold", "Factor",
    "NoCache", "PrefixCache", "DualCache",
    "InputError", "StrategyError",
]
