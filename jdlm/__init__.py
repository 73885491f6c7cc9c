"""jdlm: fast, exact decoding for masked-diffusion language models in JAX."""

from jdlm import decoding as strategies
from jdlm.checkpoint import CheckpointError, load, load_params, save
from jdlm.config import ConfigError, ModelConfig, dream_7b, llada_8b, tiny
from jdlm.decoding import (DecodeResult, InputError, Schedule, Strategy, StrategyError, decode, pad_prompts)
from jdlm.model import ForwardOutput, KVCache, Params, forward, init_params
from jdlm.tokenizer import Tokenizer, TokenizerError

__version__ = "0.1.0"

__all__ = [
    # models and checkpoints
    "ModelConfig", "llada_8b", "dream_7b", "tiny", "Params", "init_params", "load", "load_params", "save",
    "Tokenizer",
    # the forward pass
    "forward", "ForwardOutput", "KVCache",
    # decoding (rules, caches and presets live in jdlm.strategies)
    "decode", "DecodeResult", "Strategy", "Schedule", "pad_prompts", "strategies",
    # errors
    "CheckpointError", "ConfigError", "TokenizerError", "InputError", "StrategyError",
]
