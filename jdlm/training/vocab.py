"""The tokenizer of jdlm's own small models: byte-level BPE over the task suite, digits one per token."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from jdlm.tasks.vocab import CHAT_TEMPLATE, SPECIAL_TOKENS


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Trains a byte-level BPE (tokenizers library) on `texts`; ids 0-4 are the special tokens above.

    Digits are split one per token before BPE, so numbers are spelled digit by digit (easier arithmetic).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def save_tokenizer(tok, directory: str | Path) -> list[Path]:
    """Writes tokenizer.json and tokenizer_config.json (with the chat template); returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {"eos_token": "<|eos|>", "pad_token": "<|pad|>", "mask_token": "<|mask|>",
              "chat_template": CHAT_TEMPLATE}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return [directory / "tokenizer.json", directory / "tokenizer_config.json"]
