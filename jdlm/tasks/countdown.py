"""Countdown: combine every source number once with + - * / to reach the target, one equation per step."""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter

from jdlm.tasks.base import Example, Task, as_range

MAX_SOURCE = 99  # source numbers are drawn from 1..MAX_SOURCE
MAX_RESULT = 9999  # no equation may produce more than this
MAX_SOURCES = 8
OPS = "+-*/"
EQUATION = re.compile(r"([1-9][0-9]{0,3})([-+*/])([1-9][0-9]{0,3})=([1-9][0-9]{0,3})")  # positive, <= 4 digits


def apply(a: int, op: str, b: int) -> int | None:
    """a op b if the rules allow it (result a positive integer <= MAX_RESULT, division exact), else None."""
    if op == "+":
        result = a + b
    elif op == "-":
        result = a - b
    elif op == "*":
        result = a * b
    else:
        result = a // b if b and a % b == 0 else 0
    return result if 0 < result <= MAX_RESULT else None


def _parse_numbers(text: str) -> list[int] | None:
    parts = text.strip().split(",")
    if not all(re.fullmatch(r"[1-9][0-9]{0,3}", p) for p in parts):
        return None
    return [int(p) for p in parts]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Countdown(Task):
    """Reach a target from source numbers, each used exactly once.

    Input: the sources then the target, comma-separated (`39,92,22,10,89`). Output: n_sources-1 comma-separated
    equations (`39+92=131,22*10=220,220-131=89`) whose operands are the sources and earlier results, each used
    exactly once; every result is a positive integer <= 9999, division is exact, and the last result is the
    target. The scorer checks these rules, so any valid solution passes.

    Difficulty: `n_sources`, the number of sources (int or inclusive range), drawn uniformly per example.
    """

    name = "countdown"
    n_sources: int | tuple[int, int] = (3, 5)

    def __post_init__(self):
        object.__setattr__(self, "n_sources", as_range(self.n_sources, "n_sources", 2, MAX_SOURCES))

    @property
    def max_output_chars(self) -> int:
        n_equations = self.n_sources[1] - 1
        return n_equations * len("9999*9999=9999,") - 1

    def sample(self, rng: random.Random) -> Example:
        sources = [rng.randint(1, MAX_SOURCE) for _ in range(rng.randint(*self.n_sources))]
        pool, equations = list(sources), []
        while len(pool) > 1:
            a, b = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
            choices = []  # never empty: a+b fits unless both are large, and then a-b or a/a=1 applies
            for op in OPS:
                x, y = (max(a, b), min(a, b)) if op in "-/" else (a, b)
                if apply(x, op, y) is not None:
                    choices.append((x, op, y))
            x, op, y = rng.choice(choices)
            result = apply(x, op, y)
            pool.append(result)
            equations.append(f"{x}{op}{y}={result}")
        return Example(input=",".join(map(str, sources + pool)), output=",".join(equations))

    def score(self, input: str, output: str) -> bool:
        numbers = _parse_numbers(input)
        if numbers is None or len(numbers) < 3:
            return False
        available, target = Counter(numbers[:-1]), numbers[-1]
        equations = output.strip().split(",")
        if len(equations) != len(numbers) - 2:
            return False
        for equation in equations:
            match = EQUATION.fullmatch(equation)
            if match is None:
                return False
            a, op, b, result = int(match[1]), match[2], int(match[3]), int(match[4])
            if apply(a, op, b) != result:
                return False
            for operand in (a, b):  # each source and each earlier result is used at most once
                if available[operand] == 0:
                    return False
                available[operand] -= 1
            available[result] += 1
        # n-1 equations, each taking two numbers and giving one, leave one number: the last result. So every
        # source and every earlier result was used exactly once.
        return result == target
