"""Every error a user can cause and fix, in one module that imports nothing heavy (the CLI reads it before JAX).

Each message says what is wrong and how to fix it. The CLI prints any `UserError` as one `error:` line (exit 2);
anything else is a bug in jdlm.
"""


class UserError(ValueError):
    """Base of every error a user can fix: a bad flag, path, model, prompt or strategy."""


class UsageError(UserError):
    """A mistake on the command line or in its inputs."""


class ConfigError(UserError):
    """A config.json or a ModelConfig that jdlm cannot run; the message says what to change."""


class CheckpointError(UserError):
    """A jdlm checkpoint that cannot be loaded or written; the message says what is wrong and how to fix it."""


class SourceCheckpointError(UserError):
    """A Hugging Face source checkpoint that cannot be read; the message names the file and what is wrong."""


class ConversionError(UserError):
    """A conversion that cannot proceed; nothing was written at the destination."""


class TokenizerError(UserError):
    """A missing or unusable tokenizer; the message says which file."""


class StrategyError(UserError):
    """An invalid decoding strategy; the message names the field, its value and what is allowed."""


class InputError(UserError):
    """A prompt that cannot be decoded; the message says what is wrong and how to fix it."""


class PlotUnavailable(UserError):
    """matplotlib is not installed (pip install "jdlm[plot]")."""


class ShardingError(UserError):
    """A device mesh that does not fit the devices or the model; the message names the sizes that work."""
