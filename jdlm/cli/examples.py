"""What the packaged models understand: one example prompt per task, for --help and for the note on other prompts.

`tiny` and `tiny-ar` were trained on jdlm's task suite only (jdlm/tasks), so they answer prompts of the form
"TASK:" on one line, then the task's input. tests/test_cli.py runs every example that --help shows and scores the
answer with the task's own scorer.
"""

from __future__ import annotations

from jdlm.tasks import TASKS

# One input per task that both packaged models answer correctly with the default flags; names as in jdlm.tasks.
TASK_INPUTS = {
    "sudoku": "0003\n1000\n3400\n0030",
    "countdown": "50,14,54,10",
    "arithmetic": "Mia has 12 marbles. Leo has 4 times as many. How many marbles do they have together?",
    "code": "copies(text): return text repeated 4 times",
}
WHAT_TASKS_DO = {
    "sudoku": "solve a 4x4 sudoku (0 = blank)",
    "countdown": "reach the last number from the others with + - * /",
    "arithmetic": "a word problem, worked, then #### answer",
    "code": "a short Python function from a description",
}
# Marks an example that cannot run with what jdlm ships; the help test skips exactly these.
NEEDS_8B = "# needs a 7-8B model"


def shell_prompt(task: str) -> str:
    """The task prompt as one shell argument: "$(printf 'countdown:\\n50,14,54,10')"."""
    text = f"{task}:\n{TASK_INPUTS[task]}".replace("\n", "\\n")
    return f"\"$(printf '{text}')\""


def chat_input(task: str) -> str:
    """A printf that types the task prompt into `jdlm chat`, each line but the last ending in a backslash."""
    text = f"{task}:\n{TASK_INPUTS[task]}".replace("\n", "\\\\\\n")
    return f"printf '{text}\\n'"


def generate_example(task: str, model: str | None = None) -> str:
    model_flag = f" --model {model}" if model and model != "tiny" else ""
    return f"jdlm generate{model_flag} {shell_prompt(task)}"


def is_task_prompt(prompt: str) -> bool:
    """Whether `prompt` has the packaged models' form: a line "TASK:" with any task of jdlm.tasks, then some input."""
    head, _, rest = prompt.strip().partition("\n")
    return head.strip() in {f"{task}:" for task in TASKS} and bool(rest.strip())


def packaged_model_note(model: str) -> str:
    """The note for a prompt that the packaged `model` was not trained on: what it can do, one example per task."""
    lines = [(f"note: the packaged model {model!r} knows only jdlm's tasks ({', '.join(TASKS)}): a line 'TASK:', "
              "then the input (any other prompt gives text without meaning). Examples:")]
    lines += [f"  {generate_example(task, model)}   # {WHAT_TASKS_DO[task]}" for task in TASK_INPUTS]
    return "\n".join(lines)
