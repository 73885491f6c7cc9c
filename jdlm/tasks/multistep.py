"""Multi-step arithmetic: a start number and a chain of operations; every step needs the result of the one before,
so one wrong early digit breaks the answer."""

from __future__ import annotations

import dataclasses
import random
import re

from jdlm.tasks.base import Example, Task, as_range

MAX_VALUE = 999  # every running value stays in 1..MAX_VALUE
MAX_STEPS = 10
TRIES = 20  # operations drawn for one step before the sample is rejected
# How each operation can be said; `{n}` is its operand. Training draws among all of them.
PHRASES = {
    "+": ("add {n}", "plus {n}", "increase it by {n}", "add on {n}"),
    "-": ("subtract {n}", "minus {n}", "take away {n}", "decrease it by {n}"),
    "*": ("multiply by {n}", "times {n}", "scale it by {n}"),
    "/": ("divide by {n}", "share it among {n}"),
}
OPERANDS = {"+": (1, 99), "-": (1, 99), "*": (2, 9), "/": (2, 9)}
STARTS = ("Start with {n}", "Begin at {n}", "Take {n}", "Think of {n}")
JOINS = (", ", ", then ", "; ")
ENDS = (" What is the result?", " What number do you get?", " Give the final number.")
ANSWER = re.compile(r"-?[0-9]{1,12}")
_NUM = r"([1-9][0-9]{0,2})"
_CLAUSE = re.compile("|".join(f"(?:{re.escape(p).replace(re.escape('{n}'), _NUM)})"
                              for op in PHRASES for p in PHRASES[op]))
_CLAUSE_OPS = [op for op in PHRASES for _ in PHRASES[op]]  # group i+1 of _CLAUSE belongs to _CLAUSE_OPS[i]
_START = re.compile("|".join(f"(?:{re.escape(s).replace(re.escape('{n}'), _NUM)})" for s in STARTS))
_JOIN = "|".join(re.escape(j) for j in sorted(JOINS, key=len, reverse=True))
_END = "|".join(re.escape(e) for e in ENDS)


def _step(value: int, op: str, n: int) -> int | None:
    """value op n if it stays an integer in 1..MAX_VALUE, else None."""
    result = {"+": value + n, "-": value - n, "*": value * n, "/": value // n if value % n == 0 else 0}[op]
    return result if 1 <= result <= MAX_VALUE else None


def parse_problem(text: str) -> tuple[int, list[tuple[str, int]]] | None:
    """(start, [(op, operand), ...]) from a problem in any phrasing this task writes, or None."""
    match = re.fullmatch(rf"(.+?)\.(?:{_END})", text.strip())
    if match is None:
        return None
    parts = re.split(_JOIN, match[1])
    start = _START.fullmatch(parts[0])
    if start is None:
        return None
    steps = []
    for part in parts[1:]:
        clause = _CLAUSE.fullmatch(part)
        if clause is None:
            return None
        group = next(i for i, g in enumerate(clause.groups()) if g is not None)
        steps.append((_CLAUSE_OPS[group], int(clause.groups()[group])))
    return int(next(g for g in start.groups() if g is not None)), steps


def solve(start: int, steps: list[tuple[str, int]]) -> tuple[list[str], int] | None:
    """(equations, answer) of a problem, or None if a step breaks the rules."""
    value, equations = start, []
    for op, n in steps:
        result = _step(value, op, n)
        if result is None:
            return None
        equations.append(f"{value}{op}{n}={result}")
        value = result
    return equations, value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Multistep(Task):
    """A chain of arithmetic operations in words. Output: the equations, comma-separated, then `#### <answer>`.

    Input: `Start with 37, add 15, then multiply by 3; subtract 48, divide by 6. What is the result?` with the
    wording of each part drawn from several phrasings. Output: `37+15=52,52*3=156,156-48=108,108/6=18\\n#### 18`.
    Every running value is an integer in 1..999 and every division is exact. Only the number after the last
    `####` is scored.

    Difficulty: `steps`, the number of operations (int or inclusive range, 1..10), drawn uniformly per example.
    """

    name = "multistep"
    steps: int | tuple[int, int] = (4, 8)

    def __post_init__(self):
        object.__setattr__(self, "steps", as_range(self.steps, "steps", 1, MAX_STEPS))

    @property
    def max_output_chars(self) -> int:
        return self.steps[1] * len("999+99=999,") - 1 + len("\n#### 999")

    def sample(self, rng: random.Random) -> Example | None:
        start = rng.randint(2, 99)
        value, steps = start, []
        for _ in range(rng.randint(*self.steps)):
            for _ in range(TRIES):
                op = rng.choice("+-*/")
                n = rng.randint(*OPERANDS[op])
                if (result := _step(value, op, n)) is not None:
                    break
            else:
                return None
            steps.append((op, n))
            value = result
        clauses = [rng.choice(STARTS).format(n=start)] + [rng.choice(PHRASES[op]).format(n=n) for op, n in steps]
        text = clauses[0] + "".join(rng.choice(JOINS) + c for c in clauses[1:]) + "." + rng.choice(ENDS)
        equations, answer = solve(start, steps)
        return Example(input=text, output=",".join(equations) + f"\n#### {answer}")

    def score(self, input: str, output: str) -> bool:
        _, marker, answer = output.rpartition("####")
        problem = parse_problem(input)
        if not marker or not ANSWER.fullmatch(answer.strip()) or problem is None:
            return False
        solved = solve(*problem)
        return solved is not None and solved[1] == int(answer)

