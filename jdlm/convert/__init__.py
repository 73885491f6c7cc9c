"""Converts Hugging Face LLaDA / Dream checkpoints (safetensors) into jdlm checkpoints; no torch needed."""

from jdlm.convert.convert import ConversionError, convert_checkpoint

__all__ = ["ConversionError", "convert_checkpoint"]
