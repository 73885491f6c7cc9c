"""Per-task decode shapes (generation length, block length, prompt bucket), measured with the small-model tokenizer."""

from __future__ import annotations

import dataclasses

from jdlm.decoding.inputs import bucket_length
from jdlm.tasks import TASKS, Task
from jdlm.tasks.vocab import CHAT_TEMPLATE, SPECIAL_TOKENS


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskSettings:
    """The static shapes one task is decoded with.

    Attributes:
      gen_length: generated tokens per example (G): the longest answer, its EOS, rounded up to the block.
      block_length: tokens per semi-autoregressive block (divides gen_length).
      prompt_length: the bucket prompts are left-padded to (P), or None to take the bucket of the longest prompt.
        A prompt longer than the bucket moves every prompt of the evaluation to a larger bucket, so one
        evaluation always has one shape.
    """

    gen_length: int
    block_length: int
    prompt_length: int | None = None

    def __post_init__(self):
        if self.gen_length <= 0 or self.block_length <= 0:
            raise ValueError(f"gen_length and block_length must be positive, got {self.gen_length}, "
                             f"{self.block_length}")
        if self.gen_length % self.block_length:
            raise ValueError(f"block_length ({self.block_length}) must divide gen_length ({self.gen_length})")
        if self.prompt_length is not None and self.prompt_length <= 0:
            raise ValueError(f"prompt_length must be positive or None, got {self.prompt_length}")


# Measured with the small-model tokenizer (`build_task_tokenizer`) on thousands of examples of each task at its
# default difficulty (train and eval splits), answers alone and prompts chat-wrapped:
#   task        answer tokens (max)   + EOS   gen / block   prompt tokens (max)   bucket
#   sudoku              19              20      24 / 8             25               32
#   sudoku9             81              82      96 / 96            88              128
#   countdown           47              48      48 / 16            24               32
#   arithmetic          64              65      80 / 16            46               64
#   multistep           92              93      96 / 32           117              128
#   code                25              26      32 / 8             24               32
#   pycode              64              65      80 / 16           135              256
#   latin               29              30      32 / 32            37               64
# Blocks are 8 for the short answers (sudoku's 3 blocks follow its rows; code is one line) and 16 or 32 for the
# long ones (pycode: its bound, 64 characters + EOS). sudoku9 is one block: a 9x9 grid is solved in whatever
# order its constraints allow, not row by row. So is latin (5x5, 29 characters): which cells a rule commits
# together, anywhere in the square, is what it measures.
ANSWER_TOKENS = {"sudoku": 20, "sudoku9": 82, "countdown": 48, "arithmetic": 65, "multistep": 93, "code": 26,
                 "pycode": 65, "latin": 30}
TASK_SETTINGS: dict[str, TaskSettings] = {
    "sudoku": TaskSettings(gen_length=24, block_length=8, prompt_length=32),
    "sudoku9": TaskSettings(gen_length=96, block_length=96, prompt_length=128),
    "countdown": TaskSettings(gen_length=48, block_length=16, prompt_length=32),
    "arithmetic": TaskSettings(gen_length=80, block_length=16, prompt_length=64),
    "multistep": TaskSettings(gen_length=96, block_length=32, prompt_length=128),
    "code": TaskSettings(gen_length=32, block_length=8, prompt_length=32),
    "pycode": TaskSettings(gen_length=80, block_length=16, prompt_length=256),
    "latin": TaskSettings(gen_length=32, block_length=32, prompt_length=64),
}
DEFAULT_BLOCK = 16  # for tasks without measured settings


def is_task_tokenizer(tokenizer) -> bool:
    """Whether `tokenizer` is the small-model tokenizer the settings above were measured with.

    Checked by its fingerprint: the five special tokens at ids 0-4, its chat template, and numbers spelled digit by
    digit. Another BPE trained the same way would pass too; that is the point (same lengths).
    """

    try:
        specials = all(tokenizer.token_to_id(t) == i for i, t in enumerate(SPECIAL_TOKENS))
        return specials and tokenizer.chat_template == CHAT_TEMPLATE and len(tokenizer.encode("1234")) == 4
    except Exception:  # a tokenizer-like object without these methods is not ours
        return False


def task_settings(task: Task, tokenizer=None, *, gen_length: int | None = None,
                  block_length: int | None = None) -> TaskSettings:
    """The decode shapes for `task`.

    With the small-model tokenizer (or tokenizer=None) and a registered task at its default difficulty, the measured
    answer length is used: `TASK_SETTINGS`. Otherwise (another checkpoint's tokenizer, another difficulty, a task of
    your own) gen_length is bounded from the task's `max_output_chars`, one token per character being the upper
    bound, plus EOS, rounded up to the block; the prompt bucket then follows the prompts. `gen_length` and
    `block_length` given here override either.
    """
    measured = (task.name in ANSWER_TOKENS and TASKS.get(task.name) == task
                and (tokenizer is None or is_task_tokenizer(tokenizer)))
    block = block_length or (TASK_SETTINGS[task.name].block_length if task.name in TASK_SETTINGS else DEFAULT_BLOCK)
    needed = ANSWER_TOKENS[task.name] if measured else task.max_output_chars + 1
    gen_length = gen_length or -(-needed // block) * block
    return TaskSettings(gen_length=gen_length, block_length=min(block, gen_length),
                        prompt_length=TASK_SETTINGS[task.name].prompt_length if measured else None)


def prompt_bucket(settings: TaskSettings, longest: int) -> int:
    """The padded prompt length for an evaluation whose longest prompt has `longest` tokens."""
    return max(settings.prompt_length or 0, bucket_length(longest))
