"""The checkpoint's own tokenizer (tokenizer.json) and chat template, offline, without transformers."""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

from jdlm.config import ModelConfig
from jdlm.errors import TokenizerError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja", "chat_template.json")
TEMPLATE_SECONDS = 5.0  # a chat template renders in milliseconds; a nested loop can take for ever
TEMPLATE_MAX_CHARS = 1_000_000


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise TokenizerError(f"{path} is not valid JSON ({type(e).__name__}: {e}); restore the file from the "
                             "model's original tokenizer files") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} holds a JSON {type(data).__name__}, not an object; restore the file from the "
                             "model's original tokenizer files")
    return data


class _TemplateTimeout(Exception):
    pass


def _bounded_sandbox():
    """jinja2's immutable sandbox, with `*` and `**` refused where the result would exceed the output bound
    (the one place a template can build something huge in a single step that no time check interrupts)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > TEMPLATE_MAX_CHARS:
                        raise TokenizerError(f"chat template: a repetition builds more than {TEMPLATE_MAX_CHARS:,} "
                                             "items; fix the template or pass a plain prompt (--no-chat)")
            if (operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1
                    and right * math.log2(abs(left)) > 8 * TEMPLATE_MAX_CHARS):
                raise TokenizerError("chat template: a power is too large to compute; fix the template or pass a "
                                     "plain prompt (--no-chat)")
            return super().call_binop(context, operator, left, right)

    return BoundedSandbox(trim_blocks=True, lstrip_blocks=True)


def _render_bounded(template, context: dict) -> str:
    """`template.render(**context)` in at most TEMPLATE_SECONDS and TEMPLATE_MAX_CHARS characters.

    The time is checked from a trace function (every Python line the template runs), so loops that print nothing
    are stopped too; the output is counted as it streams."""
    deadline = time.monotonic() + TEMPLATE_SECONDS
    ticks = [0]

    def check_time(frame, event, arg):
        ticks[0] += 1
        if ticks[0] % 256 == 0 and time.monotonic() > deadline:
            raise _TemplateTimeout
        return check_time

    parts, size = [], 0
    previous = sys.gettrace()
    sys.settrace(check_time)
    try:
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > TEMPLATE_MAX_CHARS:
                raise TokenizerError(f"chat template: the rendered prompt exceeds {TEMPLATE_MAX_CHARS:,} characters; "
                                     "fix the template or pass a plain prompt (--no-chat)")
            parts.append(chunk)
    except _TemplateTimeout:
        raise TokenizerError(f"chat template: rendering took more than {TEMPLATE_SECONDS:g} s (a loop that does not "
                             "end?); fix the template or pass a plain prompt (--no-chat)") from None
    except RecursionError:
        raise TokenizerError("chat template: recursion too deep (a macro that calls itself without end?); fix the "
                             "template or pass a plain prompt (--no-chat)") from None
    finally:
        sys.settrace(previous)
    return "".join(parts)


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
        tok_cfg = _read_json(cfg_path) if cfg_path.exists() else {}
        template = tok_cfg.get("chat_template")
        if (directory / "chat_template.jinja").exists():
            template = (directory / "chat_template.jinja").read_text()
        elif (directory / "chat_template.json").exists():
            template = _read_json(directory / "chat_template.json").get("chat_template")
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
        from jinja2 import TemplateError

        def raise_exception(message):
            raise TokenizerError(f"chat template: {message}")

        env = _bounded_sandbox()
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.chat_template)
        except TemplateError as e:
            raise TokenizerError(f"chat template: {e}; fix the template or pass a plain prompt (--no-chat)") from None

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Renders `messages` ([{"role": "user", "content": "..."}, ...]) with the checkpoint's chat template,
        sandboxed and bounded (TEMPLATE_SECONDS, TEMPLATE_MAX_CHARS): a template past either is a TokenizerError."""
        from jinja2 import TemplateError

        if not self.chat_template:
            raise TokenizerError("this tokenizer has no chat template; pass a plain prompt instead of messages")
        context = dict(messages=messages, add_generation_prompt=add_generation_prompt, **self.special)
        try:
            return _render_bounded(self._compiled_template, context)
        except TemplateError as e:  # SecurityError, UndefinedError, ...
            raise TokenizerError(f"chat template: {e}; fix the template or pass a plain prompt (--no-chat)") from None

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Chat messages -> prompt ids (the template's text carries its own special tokens)."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))
