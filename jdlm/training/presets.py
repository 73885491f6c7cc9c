"""Architectures of jdlm's own small models, and the tokenizer corpus they share."""

from __future__ import annotations

from pathlib import Path

import jax

from jdlm.config import ModelConfig
from jdlm.tasks.vocab import EOS, MASK, PAD
from jdlm.training.vocab import build_tokenizer, save_tokenizer

VOCAB = 1024  # the BPE's size (build_task_tokenizer asks for exactly this many tokens; a multiple of 64)


def tiny_mdm_config() -> ModelConfig:
    """`tiny`: a LLaDA-architecture masked-diffusion model, ~11M parameters (~21 MB in bf16)."""
    return ModelConfig(family="llada", vocab_size=VOCAB, d_model=320, n_layers=8, n_heads=5, n_kv_heads=5,
                       head_dim=64, mlp_hidden=896, rope_theta=10000.0, norm_eps=1e-5, max_seq_len=256,
                       mask_id=MASK, eos_id=EOS, pad_id=PAD)


def tiny_ar_config() -> ModelConfig:
    """`tiny-ar`: a causal model on the same tokenizer, for AR-guided decoding (~4M parameters)."""
    return ModelConfig(family="llada", vocab_size=VOCAB, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4,
                       head_dim=64, mlp_hidden=704, rope_theta=10000.0, norm_eps=1e-5, max_seq_len=256,
                       mask_id=MASK, eos_id=EOS, pad_id=PAD, causal=True)


def task_corpus(n_per_task: int = 3000, seed: int = 0) -> list[str]:
    """Prompts and answers of every task's train split: the BPE's training text."""
    from jdlm.tasks import TASKS

    texts = []
    for task in TASKS.values():
        for ex in task.generate("train", n_per_task, seed=seed):
            texts += [task.prompt(ex.input), ex.output]
    return texts


def build_task_tokenizer(directory: str | Path) -> list[Path]:
    """Builds the shared BPE from the task corpus (deterministic, a few seconds) and writes it to `directory`."""
    return save_tokenizer(build_tokenizer(task_corpus(), vocab_size=VOCAB), directory)


def random_checkpoint(directory: str | Path, config: ModelConfig | None = None, seed: int = 0) -> Path:
    """A checkpoint with the small-model tokenizer and random weights (for tests and development)."""
    import tempfile

    from jdlm.checkpoint import save
    from jdlm.model import init_params

    params = init_params(config or tiny_mdm_config(), jax.random.key(seed))
    with tempfile.TemporaryDirectory() as tmp:
        files = build_task_tokenizer(tmp)
        return save(directory, params, tokenizer_files=files, manifest={"note": "random weights"})
