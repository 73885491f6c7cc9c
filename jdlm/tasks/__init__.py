"""Generated reasoning tasks for small masked-diffusion models: seeded generators, prompts, exact scorers."""

from jdlm.tasks.arithmetic import Arithmetic
from jdlm.tasks.base import SPLITS, Example, Task, load_jsonl, save_jsonl, split_of
from jdlm.tasks.code import Code
from jdlm.tasks.countdown import Countdown
from jdlm.tasks.latin import Latin
from jdlm.tasks.multistep import Multistep
from jdlm.tasks.pycode import PyCode
from jdlm.tasks.sudoku import Sudoku
from jdlm.tasks.sudoku9 import Sudoku9

# Each at its default difficulty; `task.generate(..., **difficulty)` or `task.with_difficulty(...)` changes it.
TASKS: dict[str, Task] = {task.name: task for task in (Sudoku(), Sudoku9(), Countdown(), Arithmetic(), Multistep(),
                                                        Code(), PyCode(), Latin())}


def get_task(name: str) -> Task:
    """The registered task called `name`; ValueError naming the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = [
    # records and I/O
    "Example", "load_jsonl", "save_jsonl",
    # tasks
    "Task", "TASKS", "get_task", "Sudoku", "Sudoku9", "Countdown", "Arithmetic", "Multistep", "Code", "PyCode",
    "Latin",
    # splits
    "SPLITS", "split_of",
]
