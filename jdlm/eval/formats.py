"""Evaluation files in public formats, read into our examples: jsonl {"input", "output"}, countdown {"nums",
"target"} (TinyZero, Stream-of-Search), sudoku (Kaggle CSV, jsonl {"puzzle", "solution"}) and GSM8K
{"question", "answer"}.

    data = read_data("countdown_test.jsonl")   # DataFile(format="countdown", tasks=("countdown",), examples=...)
    E.evaluate(params, tok, data.task, "low_confidence", data=data)

The format is read from the file's suffix (.jsonl / .json: one JSON object a line; .csv) and, for jsonl, the keys of
its first object; every line must then have the same form. A file of no known form is a UsageError naming the
accepted ones. Examples whose file gives no reference answer get output "" (any valid answer scores).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

from jdlm.errors import UsageError
from jdlm.tasks.base import Example, json_records

ACCEPTED = ('jsonl {"input", "output"} (with --task; output optional); jsonl {"nums", "target"} (countdown); '
            'jsonl {"puzzle", "solution"} or CSV with columns quizzes,solutions or puzzle,solution (sudoku: 81 cells '
            'sudoku9, 16 cells sudoku; 0 or . for blanks); jsonl {"question", "answer"} with "#### N" (GSM8K)')
SUDOKU_TASKS = {81: "sudoku9", 16: "sudoku"}  # cells -> task
SUDOKU_DIGITS = {81: "123456789", 16: "1234"}
SUDOKU_COLUMNS = (("quizzes", "solutions"), ("puzzle", "solution"))  # Kaggle's two layouts: (puzzle, solution)
ARITHMETIC_TASKS = ("arithmetic", "multistep")  # tasks that take a word problem and answer with "#### N"
MAX_COUNTDOWN_NUMBER = 9999  # the countdown input's numbers are 1..9999
FINAL_ANSWER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataFile:
    """Examples read from one file, and what its format says about scoring them.

    Attributes:
      path: the file.
      format: "jsonl", "countdown", "sudoku" or "gsm8k".
      examples: in file order; `output` is the file's reference answer, "" where it gives none.
      tasks: the tasks that can prompt and score these examples, the one the format implies first; () for plain
        jsonl, which any task may score (the caller names it).
      scorer: (example, generated text) -> correct, replacing the task's own scorer; None keeps the task's. GSM8K
        questions are free text that no task template parses, so they are scored by the reference's final answer.
    """

    path: str
    format: str
    examples: tuple[Example, ...]
    tasks: tuple[str, ...] = ()
    scorer: Callable[[Example, str], bool] | None = None

    @property
    def task(self) -> str | None:
        """The task the format implies, or None (plain jsonl: the caller must name one)."""
        return self.tasks[0] if self.tasks else None

    def check_task(self, name: str) -> None:
        """UsageError unless task `name` can prompt and score these examples."""
        if self.tasks and name not in self.tasks:
            raise UsageError(f"--data {self.path} holds {self.format} examples, for task {' or '.join(self.tasks)}; "
                             f"task {name} cannot score them (leave --task out to use {self.task})")


def read_data(path: str | Path) -> DataFile:
    """The examples of a file in any accepted format (see `ACCEPTED`).

    Raises:
      UsageError: no such file, an unknown format, or a line / row that breaks its format (named with its number);
        always one line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"--data {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_sudoku_csv(path)
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    raise UsageError(f"--data {path}: unknown format {suffix or '(no suffix)'!r}; accepted: {ACCEPTED}")


# ---------------------------------------------------------------------------------------------- jsonl


def _read_jsonl(path: Path) -> DataFile:
    records = list(_json_lines(path))
    if not records:
        raise UsageError(f"--data {path} holds no examples")
    keys = set(records[0][1])
    format = next((name for name, needed in JSONL_FORMATS.items() if needed <= keys), None)
    if format is None:
        raise UsageError(f"--data {path}: unknown format (its first object has keys {', '.join(sorted(keys))}); "
                         f"accepted: {ACCEPTED}")
    read = JSONL_READERS[format]
    examples, tasks = [], set()
    for lineno, record in records:
        missing = sorted(JSONL_FORMATS[format] - set(record))
        if missing:
            raise UsageError(f"--data {path}:{lineno}: no {', '.join(map(repr, missing))}; every line of a {format} "
                             f"file needs {', '.join(map(repr, sorted(JSONL_FORMATS[format])))}")
        try:
            example, task = read(record)
        except ValueError as e:
            raise UsageError(f"--data {path}:{lineno}: {e}") from None
        examples.append(example)
        tasks.add(task)
    return _data_file(path, format, examples, tasks)


def _json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """`json_records` with its errors as UsageError naming --data."""
    try:
        yield from json_records(path)
    except ValueError as e:
        raise UsageError(f"--data {e}") from None


def _plain(record: dict) -> tuple[Example, None]:
    """Our own form; "output" (a reference answer) may be left out."""
    for key in ("input", "output"):
        if not isinstance(record.get(key, ""), str):
            raise ValueError(f"{key!r} is not a string")
    return Example(input=record["input"], output=record.get("output", "")), None


def _countdown(record: dict) -> tuple[Example, str]:
    """{"nums": [n1, ..., nk], "target": t} -> input "n1,...,nk,t"; a string "output" or "solution" in our
    equation form is kept as the reference."""
    nums, target = record["nums"], record["target"]
    if not isinstance(nums, list) or len(nums) < 2:
        raise ValueError(f"'nums' must be a list of at least two numbers, got {nums!r}")
    for value in [*nums, target]:
        if type(value) is not int or not 1 <= value <= MAX_COUNTDOWN_NUMBER:
            raise ValueError(f"countdown numbers must be integers from 1 to {MAX_COUNTDOWN_NUMBER}, got {value!r}")
    reference = next((record[k] for k in ("output", "solution") if isinstance(record.get(k), str)), "")
    return Example(input=",".join(map(str, [*nums, target])), output=reference), "countdown"


def _sudoku_record(record: dict) -> tuple[Example, str]:
    return sudoku_example(record["puzzle"], record.get("solution"))


def _gsm8k(record: dict) -> tuple[Example, str]:
    question, answer = record["question"], record["answer"]
    if not isinstance(question, str) or not isinstance(answer, str):
        raise ValueError("'question' and 'answer' must be strings")
    if final_answer(answer) is None:
        raise ValueError(f"'answer' must end in '#### N' (a number), got ...{answer[-40:]!r}")
    return Example(input=question.strip(), output=answer), ARITHMETIC_TASKS[0]


# The keys that identify each jsonl format, tried in this order, and the reader of one object.
JSONL_FORMATS = {"jsonl": {"input"}, "countdown": {"nums", "target"}, "sudoku": {"puzzle"},
                 "gsm8k": {"question", "answer"}}
JSONL_READERS = {"jsonl": _plain, "countdown": _countdown, "sudoku": _sudoku_record, "gsm8k": _gsm8k}


# ---------------------------------------------------------------------------------------------- sudoku


def sudoku_example(puzzle, solution=None) -> tuple[Example, str]:
    """(example, task) for an 81- or 16-cell puzzle string (0 or . for blanks) and its optional solution.

    Input: 81 cells -> the 81-character line with 0 for blanks (task sudoku9); 16 cells -> four lines of four
    digits (task sudoku, our 4x4 form). The solution, when given, is written the same way.
    """
    if not isinstance(puzzle, str):
        raise ValueError(f"the puzzle must be a string of 81 or 16 cells, got {puzzle!r}")
    cells = puzzle.strip().replace(".", "0")
    n = len(cells)
    if n not in SUDOKU_TASKS:
        raise ValueError(f"a sudoku puzzle has 81 (9x9) or 16 (4x4) cells, got {n}")
    if any(c not in "0" + SUDOKU_DIGITS[n] for c in cells):
        raise ValueError(f"a {n}-cell puzzle holds digits 1-{SUDOKU_DIGITS[n][-1]} and 0 or . for blanks, got "
                         f"{puzzle.strip()!r}")
    reference = ""
    if solution not in (None, ""):
        solved = solution.strip() if isinstance(solution, str) else None
        if solved is None or len(solved) != n or any(c not in SUDOKU_DIGITS[n] for c in solved):
            raise ValueError(f"the solution must be {n} digits 1-{SUDOKU_DIGITS[n][-1]}, got {solution!r}")
        if any(p not in ("0", s) for p, s in zip(cells, solved, strict=True)):
            raise ValueError("the solution changes a given cell of the puzzle")
        reference = _sudoku_text(solved)
    return Example(input=_sudoku_text(cells), output=reference), SUDOKU_TASKS[n]


def _sudoku_text(cells: str) -> str:
    """81 cells stay one line; 16 cells become our 4x4 form, four lines of four."""
    return cells if len(cells) == 81 else "\n".join(cells[i:i + 4] for i in range(0, 16, 4))


def _read_sudoku_csv(path: Path) -> DataFile:
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        header = [h.strip().lower() for h in next(rows, [])]
        columns = next(((p, s) for p, s in SUDOKU_COLUMNS if p in header), None)
        if columns is None:
            raise UsageError(f"--data {path}: unknown CSV format (columns {', '.join(header) or 'none'}); accepted: "
                             f"{ACCEPTED}")
        puzzle_at = header.index(columns[0])
        solution_at = header.index(columns[1]) if columns[1] in header else None
        examples, tasks = [], set()
        for lineno, row in enumerate(rows, start=2):
            if not any(cell.strip() for cell in row):
                continue
            try:
                if len(row) != len(header):
                    raise ValueError(f"{len(row)} fields where the header has {len(header)}")
                example, task = sudoku_example(row[puzzle_at], None if solution_at is None else row[solution_at])
            except ValueError as e:
                raise UsageError(f"--data {path}:{lineno}: {e}") from None
            examples.append(example)
            tasks.add(task)
    if not examples:
        raise UsageError(f"--data {path} holds no examples")
    return _data_file(path, "sudoku", examples, tasks)


# ---------------------------------------------------------------------------------------------- tasks and scoring


def _data_file(path: Path, format: str, examples: list[Example], tasks: set) -> DataFile:
    if len(tasks) > 1:
        raise UsageError(f"--data {path} mixes examples of tasks {', '.join(sorted(tasks))}; give one file per task")
    implied = tasks.pop()
    if format == "gsm8k":
        return DataFile(path=str(path), format=format, examples=tuple(examples), tasks=ARITHMETIC_TASKS,
                        scorer=final_answer_matches)
    return DataFile(path=str(path), format=format, examples=tuple(examples), tasks=(implied,) if implied else ())


def final_answer(text: str) -> Decimal | None:
    """The number after the last "####" (GSM8K's answer line; commas, $ and spaces ignored), or None."""
    _, marker, tail = text.rpartition("####")
    value = tail.strip().replace(",", "").replace("$", "").replace(" ", "")
    if not marker or not FINAL_ANSWER.fullmatch(value):
        return None
    try:
        return Decimal(value)
    except InvalidOperation:  # unreachable for the pattern above; a scorer never raises
        return None


def final_answer_matches(example: Example, text: str) -> bool:
    """Whether generated `text` ends in "#### N" with N the reference's final answer (numerically: 18 == 18.0)."""
    got, want = final_answer(text), final_answer(example.output)
    return got is not None and want is not None and got == want
