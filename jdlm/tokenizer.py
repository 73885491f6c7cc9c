"""The checkpoint's own tokenizer (tokenizer.json) and chat template, offline, without transformers."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Sequence

from jdlm.config import ModelConfig
from jdlm.errors import TokenizerError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja", "chat_template.json")



def _token_text(value) -> str | None:
    """Special tokens appear as strings or as {"content": ...} dicts in tokenizer_config.json."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    """Encodes and decodes text with a checkpoint's tokenizer.json and renders its chat template.

    Special ids (mask, EOS, pad, end of turn) come from the model config, which is the source of truth for them.
    """

    def __init__(self, tokenizer, config: ModelConfig, chat_template: str | None = None,
                 special: dict[str, str] | None = None):
        self._tok = tokenizer
        self.config = config
        self.chat_template = chat_template
        self.special = special or {}

    @classmethod
    def from_dir(cls, directory: str | Path, config: ModelConfig) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.exists():
            raise TokenizerError(f"{directory} has no tokenizer.json; copy the model's tokenizer files there "
                                 "(tokenizer.json, tokenizer_config.json)")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:
            raise TokenizerError(f"{path} could not be read ({e})") from None
        cfg_path = directory / "tokenizer_config.json"
        tok_cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        template = tok_cfg.get("chat_template")
        if (directory / "chat_template.jinja").exists():
            template = (directory / "chat_template.jinja").read_text()
        elif (directory / "chat_template.json").exists():
            template = json.loads((directory / "chat_template.json").read_text()).get("chat_template")
        special = {k: _token_text(tok_cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token")
                   if tok_cfg.get(k) is not None}
        return cls(tok, config, template, special)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def mask_id(self) -> int:
        return self.config.mask_id

    @property
    def eos_id(self) -> int:
        return self.config.eos_id

    @property
    def pad_id(self) -> int:
        return self.config.pad_id

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text -> token ids (no BOS/EOS unless `add_special_tokens`)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Many texts -> token ids (in parallel)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def answer_ids(self, ids: Sequence[int]) -> list[int]:
        """Generated ids up to (not including) the first end token (EOS, end of turn) or mask token."""
        stops = {*self.config.end_ids, self.config.mask_id}
        out = []
        for i in ids:
            if int(i) in stops:
                break
            out.append(int(i))
        return out

    def decode(self, ids: Sequence[int], *, stop_at_eos: bool = True, skip_special_tokens: bool = True) -> str:
        """Token ids -> text, cut at the first EOS / end-of-turn / mask token when `stop_at_eos`."""
        ids = self.answer_ids(ids) if stop_at_eos else [int(i) for i in ids]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(int(i)) or ""

    @functools.cached_property
    def _compiled_template(self):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TokenizerError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Renders `messages` ([{"role": "user", "content": "..."}, ...]) with the checkpoint's chat template."""
        if not self.chat_template:
            raise TokenizerError("this tokenizer has no chat template; pass a plain prompt instead of messages")
        return self._compiled_template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                              **self.special)

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Chat messages -> prompt ids (the template's text carries its own special tokens)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))
