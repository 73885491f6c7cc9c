"""--model before JAX is imported: is it there (else the closest name), and is it a causal model?"""

from __future__ import annotations

from pathlib import Path

from jdlm.cli.args import PACKAGED_MODELS, did_you_mean
from jdlm.errors import UsageError


def model_dir(model: str) -> Path:
    """The directory of --model (a packaged name or a path), found without importing JAX."""
    if model in PACKAGED_MODELS:
        import jdlm

        return Path(jdlm.__file__).parent / "models" / model
    return Path(model).expanduser()


def check_model(model: str, flag: str = "--model") -> Path:
    """The checkpoint directory of `model`; a missing one is a one-line error with the closest name there is."""
    directory = model_dir(model)
    if model in PACKAGED_MODELS or directory.is_dir():
        return directory
    named = " ".join(filter(None, [flag, model])) + ("" if str(directory) == model else f" ({directory})")
    if directory.exists():
        raise UsageError(f"{named} is a file; give a jdlm checkpoint directory")
    siblings = [p.name for p in directory.parent.iterdir() if p.is_dir()] if directory.parent.is_dir() else []
    hint = did_you_mean(model, PACKAGED_MODELS) or did_you_mean(directory.name, siblings)
    raise UsageError(f"{named} does not exist{hint}; give a converted checkpoint directory or a packaged model "
                     f"({', '.join(PACKAGED_MODELS)})")


def is_causal(directory: Path) -> bool:
    """Whether the checkpoint's config.json marks an autoregressive model (read without loading anything)."""
    from jdlm.config import read_config_json

    if not (directory / "config.json").is_file():
        return False  # not a checkpoint: loading it says what is missing
    return bool(read_config_json(directory).get("jdlm_config", {}).get("causal", False))


# Flags that only a masked-diffusion decode reads, with their defaults.
DIFFUSION_FLAGS = {"strategy": "low_confidence", "cache": "none", "guide": None, "steps": None, "block_length": None,
                   "temperature": 0.0, "cfg": 0.0, "no_eos_stop": False, "mesh": None, "joint": None,
                   "joint_head": None}


def check_causal_flags(args) -> None:
    """A causal model decodes greedily left to right: flags that shape a diffusion decode are an error."""
    given = [f"--{name.replace('_', '-')}" for name, default in DIFFUSION_FLAGS.items()
             if getattr(args, name, default) != default]
    if given:
        raise UsageError(f"{', '.join(given)}: only for masked-diffusion models; {args.model} is a causal model, "
                         f"decoded greedily left to right with a KV cache (drop {'it' if len(given) == 1 else 'them'})")
