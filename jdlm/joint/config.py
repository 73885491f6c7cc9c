"""The settings of a sampler-head training run (standard library only: the `jdlm` command reads its defaults)."""

from __future__ import annotations

import dataclasses
import json

DEFAULT_TASKS = {"pycode": 0.5, "countdown": 0.2, "arithmetic": 0.2, "code": 0.1}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplerTrainConfig:
    """Everything that defines a sampler training run (saved as `run_dir/sampler_config.json`).

    base: the frozen model (a jdlm checkpoint path or packaged name). tasks: the share of each task's train-split
    prompts among the `trajectories` decoded. prompt_length: the padded prompt length (a longer prompt is skipped).
    gen_length, block_length: the decode the trajectories come from (one token per forward, `entropy` order).
    trajectory_batch: prompts decoded at once when making the trajectories (a larger batch is faster on a GPU; the
    batch is part of each decode's random key, so it is part of the run's identity).
    """

    base: str = "tiny"
    tasks: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_TASKS))
    trajectories: int = 4096
    prompt_length: int = 128
    gen_length: int = 64
    block_length: int = 16
    temperature: float = 1.0
    trajectory_batch: int = 256
    max_unroll: int = 4
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-4
    warmup: int = 100
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    compute_dtype: str = "float32"
    seed: int = 0
    save_every: int = 500
    log_every: int = 50

    def __post_init__(self):
        for name in ("trajectories", "trajectory_batch", "steps", "batch_size", "gen_length", "block_length",
                     "prompt_length", "save_every", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive whole number, got {getattr(self, name)!r}")
        if self.gen_length % self.block_length:
            raise ValueError(f"block_length ({self.block_length}) must divide gen_length ({self.gen_length})")
        if not 1 <= self.max_unroll < self.block_length:
            raise ValueError(f"max_unroll must be in [1, block_length), got {self.max_unroll}")
        if not self.tasks or any(w <= 0 for w in self.tasks.values()):
            raise ValueError(f"tasks must give each task a positive share, got {self.tasks}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)
