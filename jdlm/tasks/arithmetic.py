"""Grade-school word problems (GSM8K style) from templates: a worked solution, then `#### <answer>`."""

from __future__ import annotations

import dataclasses
import operator
import random
import re
from typing import Any

from jdlm.tasks.base import Example, Task, Template, as_range

MAX_VALUE = 10_000  # every intermediate result lies in [0, MAX_VALUE]; drawn operands are at most 100
MAX_OUTPUT = 200
TRIES = 100  # draws of numbers for one template before the sample is rejected
WORDS = {"p": ("Tom", "Ann", "Ben", "Mia", "Sam", "Lily", "Max", "Zoe", "Leo", "Ella", "Jack", "Nora"),
         "item": ("apples", "pencils", "marbles", "stickers", "cards", "books", "oranges", "shells"),
         "plant": ("roses", "tulips", "trees", "bushes")}
WORDS["q"] = WORDS["p"]  # a second person
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
STEP = re.compile(r"(\w)=(\w)([-+*/])(\w)")
ANSWER = re.compile(r"-?[0-9]{1,12}")


class _Invalid(Exception):
    """A drawn problem breaks a rule (negative, too large, inexact division); the draw is rejected."""


def _eq(a: int, op: str, b: int) -> tuple[str, int]:
    """The equation text `a op b=r` and r; _Invalid unless r is an integer in [0, MAX_VALUE]."""
    if op == "/" and (b == 0 or a % b):
        raise _Invalid
    r = OPS[op](a, b)
    if not 0 <= r <= MAX_VALUE:
        raise _Invalid
    return f"{a}{op}{b}={r}", r


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
    """A question template, its steps and a solution template.

    Each step `(x, a, op, b)` names the result of `a op b` over drawn numbers and earlier results; the answer is
    the last step's result. In `solution` a step's name stands for its equation: `{x}` becomes `3*12=36`.
    """

    question: Template
    steps: tuple[tuple[str, str, str, str], ...]
    solution: str

    def solve(self, values: dict[str, Any]) -> tuple[str, int]:
        """(worked solution, answer) for drawn values; _Invalid if a step breaks a rule."""
        numbers, texts = dict(values), dict(values)
        for x, a, op, b in self.steps:
            texts[x], numbers[x] = _eq(numbers[a], op, numbers[b])
        return self.solution.format(**texts), numbers[self.steps[-1][0]]


def _problem(question: str, steps: str, solution: str, **ints: tuple[int, int]) -> Problem:
    """A Problem from its texts; `steps` is written `x=a*b y=x-c`."""
    words = {f: choices for f, choices in WORDS.items() if "{" + f + "}" in question}
    return Problem(question=Template(text=question, ints=ints, words=words),
                   steps=tuple(STEP.fullmatch(s).groups() for s in steps.split()), solution=solution)


PROBLEMS = (
    _problem("{p} has {a} boxes of {b} {item}. {p} gives away {c} {item}. How many {item} does {p} have left?",
             "x=a*b y=x-c", "{p} has {x} {item}, so {y} are left.", a=(2, 9), b=(2, 20), c=(1, 100)),
    _problem("{p} buys {a} {item} for {b} dollars each and pays with {c} dollars. How much change does {p} get?",
             "x=a*b y=c-x", "The {item} cost {x} dollars, so the change is {y} dollars.",
             a=(2, 9), b=(1, 20), c=(10, 100)),
    _problem("{p} has {a} {item} and finds {b} more. {p} shares them equally among {c} friends. "
             "How many {item} does each friend get?",
             "x=a+b y=x/c", "{p} has {x} {item}, so each friend gets {y}.", a=(1, 100), b=(1, 100), c=(2, 10)),
    _problem("{p} has {a} {item}. {q} has {b} times as many. How many {item} do they have together?",
             "x=a*b y=a+x", "{q} has {x} {item}, so together they have {y}.", a=(2, 50), b=(2, 9)),
    _problem("{p} reads {a} pages a day for {b} days, then {c} pages a day for {d} days. "
             "How many pages does {p} read in total?",
             "x=a*b y=c*d z=x+y", "{p} reads {x} pages, then {y} pages, so {z} pages in total.",
             a=(2, 60), b=(2, 14), c=(2, 60), d=(2, 14)),
    _problem("A garden has {a} rows of {b} {plant}. {c} {plant} die and {p} plants {d} new ones. "
             "How many {plant} are there now?",
             "x=a*b y=x-c z=y+d", "There were {x} {plant}. After {c} die, {y}. With {d} new ones, {z}.",
             a=(2, 20), b=(2, 20), c=(1, 50), d=(2, 50)),
    _problem("{p} bakes {a} trays of {b} cookies, eats {c} of them and packs the rest into bags of {d}. "
             "How many bags does {p} fill?",
             "x=a*b y=x-c z=y/d", "{p} bakes {x} cookies and has {y} left, so {z} bags.",
             a=(2, 9), b=(2, 24), c=(1, 20), d=(2, 10)),
    _problem("{p} saves {a} dollars a week for {b} weeks and spends {c} dollars on {item}. {q} gives {p} {d} "
             "dollars. How much money does {p} have now?",
             "x=a*b y=x-c z=y+d", "{p} saves {x} dollars, has {y} after shopping and {z} after the gift.",
             a=(2, 50), b=(2, 20), c=(1, 100), d=(1, 100)),
    _problem("{p} buys {a} packs of {b} {item} and {c} packs of {d} {item}, then splits them into {e} equal "
             "groups. How many {item} are in each group?",
             "x=a*b y=c*d z=x+y w=z/e", "{p} buys {x} and {y} {item}, so {z} in all. Each group gets {w}.",
             a=(2, 9), b=(2, 20), c=(2, 9), d=(2, 20), e=(2, 10)),
    _problem("A bus has {a} rows of {b} seats and {c} seats are broken. {d} people get on, then {e} get off. "
             "How many working seats are empty?",
             "x=a*b y=x-c z=d-e w=y-z", "There are {x} seats and {y} work. {z} people stay, so {w} seats are empty.",
             a=(5, 20), b=(2, 6), c=(1, 10), d=(1, 60), e=(0, 30)),
    _problem("{p} picks {a} {item} a day for {b} days and {q} picks {c} a day for {d} days. They sell {e} "
             "{item}. How many {item} are left?",
             "x=a*b y=c*d z=x+y w=z-e", "{p} picks {x} and {q} picks {y} {item}, so {z}. After selling, {w} are left.",
             a=(2, 30), b=(2, 10), c=(2, 30), d=(2, 10), e=(1, 100)),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Arithmetic(Task):
    """Multi-step word problems. Input: the question. Output: one line of equations, then `#### <answer>`.

    Difficulty: `steps`, the number of arithmetic steps (int or inclusive range within 2..4); a template with
    that many steps is drawn uniformly. Only the number after the last `####` is scored.
    """

    name = "arithmetic"
    steps: int | tuple[int, int] = (2, 4)

    def __post_init__(self):
        object.__setattr__(self, "steps", as_range(self.steps, "steps", 2, 4))

    @property
    def max_output_chars(self) -> int:
        return MAX_OUTPUT

    def sample(self, rng: random.Random) -> Example | None:
        problem = rng.choice([p for p in PROBLEMS if self.steps[0] <= len(p.steps) <= self.steps[1]])
        for _ in range(TRIES):  # redraw the numbers, not the template, so that templates stay equally likely
            values = problem.question.draw(rng)
            if "q" in values and values["q"] == values["p"]:  # two people need two names
                continue
            try:
                solution, answer = problem.solve(values)
            except _Invalid:
                continue
            output = f"{solution}\n#### {answer}"
            if len(output) <= MAX_OUTPUT:
                return Example(input=problem.question.fill(values), output=output)
        return None

    def score(self, input: str, output: str) -> bool:
        _, marker, answer = output.rpartition("####")
        if not marker or not ANSWER.fullmatch(answer.strip()):
            return False
        for problem in PROBLEMS:
            values = problem.question.parse(input.strip())
            if values is not None:
                try:
                    return problem.solve(values)[1] == int(answer)
                except _Invalid:
                    return False
        return False
