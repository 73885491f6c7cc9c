"""Grade-school word problems (GSM8K style) from templates: a worked solution, then `#### <answer>`."""

from __future__ import annotations

import dataclasses
import operator
import random
import re
from collections.abc import Callable
from typing import Any

from jdlm.tasks.base import Example, Task, Template, as_range

MAX_VALUE = 10_000  # every intermediate result lies in [0, MAX_VALUE]; drawn operands are at most 100
MAX_OUTPUT = 200
NAMES = ("Tom", "Ann", "Ben", "Mia", "Sam", "Lily", "Max", "Zoe", "Leo", "Ella", "Jack", "Nora")
ITEMS = ("apples", "pencils", "marbles", "stickers", "cards", "books", "oranges", "shells")
PLANTS = ("roses", "tulips", "trees", "bushes")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
ANSWER = re.compile(r"-?[0-9]{1,12}")


class _Invalid(Exception):
    """A drawn problem breaks a rule (negative, too large, inexact division); the draw is rejected."""


def _eq(a: int, op: str, b: int) -> tuple[str, int]:
    """The equation text `a op b = r` and r, or _Invalid if r is not an integer in [0, MAX_VALUE]."""
    if op == "/" and (b == 0 or a % b):
        raise _Invalid
    r = OPS[op](a, b)
    if not 0 <= r <= MAX_VALUE:
        raise _Invalid
    return f"{a}{op}{b}={r}", r


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
    """A question template, its number of steps, and `solve(values) -> (worked solution, answer)`."""

    question: Template
    steps: int
    solve: Callable[[dict[str, Any]], tuple[str, int]]


def _boxes(v):
    t1, x = _eq(v["a"], "*", v["b"])
    t2, y = _eq(x, "-", v["c"])
    return f"{v['p']} has {t1} {v['item']}, so {t2} are left.", y


def _change(v):
    t1, x = _eq(v["a"], "*", v["b"])
    t2, y = _eq(v["c"], "-", x)
    return f"The {v['item']} cost {t1} dollars, so the change is {t2} dollars.", y


def _share(v):
    t1, x = _eq(v["a"], "+", v["b"])
    t2, y = _eq(x, "/", v["c"])
    return f"{v['p']} has {t1} {v['item']}, so each friend gets {t2}.", y


def _together(v):
    t1, x = _eq(v["a"], "*", v["b"])
    t2, y = _eq(v["a"], "+", x)
    return f"{v['q']} has {t1} {v['item']}, so together they have {t2}.", y


def _reading(v):
    t1, x = _eq(v["a"], "*", v["b"])
    t2, y = _eq(v["c"], "*", v["d"])
    t3, z = _eq(x, "+", y)
    return f"{v['p']} reads {t1} pages, then {t2} pages, so {t3} pages in total.", z


def _garden(v):
    t1, x = _eq(v["a"], "*", v["b"])
    t2, y = _eq(x, "-", v["c"])
    t3, z = _eq(y, "+", v["d"])
    return f"There were {t1} {v['plant']}. After {v['c']} die, {t2}. With {v['d']} new ones, {t3}.", z


def _bags(v):
    t1, x = _eq(v["a"], "*", v["b"])
    t2, y = _eq(x, "-", v["c"])
    t3, z = _eq(y, "/", v["d"])
    return f"{v['p']} bakes {t1} cookies and has {t2} left, so {t3} bags.", z


def _savings(v):
    t1, x = _eq(v["a"], "*", v["b"])
    t2, y = _eq(x, "-", v["c"])
    t3, z = _eq(y, "+", v["d"])
    return f"{v['p']} saves {t1} dollars, has {t2} after shopping and {t3} after the gift.", z


def _groups(v):
    t1, x = _eq(v["a"], "*", v["b"])
    t2, y = _eq(v["c"], "*", v["d"])
    t3, z = _eq(x, "+", y)
    t4, w = _eq(z, "/", v["e"])
    return f"{v['p']} buys {t1} and {t2} {v['item']}, so {t3} in all. Each group gets {t4}.", w


def _seats(v):
    t1, x = _eq(v["a"], "*", v["b"])
    t2, y = _eq(x, "-", v["c"])
    t3, z = _eq(v["d"], "-", v["e"])
    t4, w = _eq(y, "-", z)
    return f"There are {t1} seats and {t2} work. {t3} people stay, so {t4} seats are empty.", w


def _picking(v):
    t1, x = _eq(v["a"], "*", v["b"])
    t2, y = _eq(v["c"], "*", v["d"])
    t3, z = _eq(x, "+", y)
    t4, w = _eq(z, "-", v["e"])
    return f"{v['p']} picks {t1} and {v['q']} picks {t2} {v['item']}, so {t3}. After selling, {t4} are left.", w


def _problem(question: str, steps: int, solve, **ints: tuple[int, int]) -> Problem:
    words = {"p": NAMES, "q": NAMES, "item": ITEMS, "plant": PLANTS}
    used = {f for f in words if "{" + f + "}" in question}
    return Problem(question=Template(text=question, ints=ints, words={f: words[f] for f in used}),
                   steps=steps, solve=solve)


PROBLEMS = (
    _problem("{p} has {a} boxes of {b} {item}. {p} gives away {c} {item}. How many {item} does {p} have left?",
             2, _boxes, a=(2, 9), b=(2, 20), c=(1, 100)),
    _problem("{p} buys {a} {item} for {b} dollars each and pays with {c} dollars. How much change does {p} get?",
             2, _change, a=(2, 9), b=(1, 20), c=(10, 100)),
    _problem("{p} has {a} {item} and finds {b} more. {p} shares them equally among {c} friends. "
             "How many {item} does each friend get?", 2, _share, a=(1, 100), b=(1, 100), c=(2, 10)),
    _problem("{p} has {a} {item}. {q} has {b} times as many. How many {item} do they have together?",
             2, _together, a=(2, 50), b=(2, 9)),
    _problem("{p} reads {a} pages a day for {b} days, then {c} pages a day for {d} days. "
             "How many pages does {p} read in total?", 3, _reading, a=(2, 60), b=(2, 14), c=(2, 60), d=(2, 14)),
    _problem("A garden has {a} rows of {b} {plant}. {c} {plant} die and {p} plants {d} new ones. "
             "How many {plant} are there now?", 3, _garden, a=(2, 20), b=(2, 20), c=(1, 50), d=(1, 50)),
    _problem("{p} bakes {a} trays of {b} cookies, eats {c} of them and packs the rest into bags of {d}. "
             "How many bags does {p} fill?", 3, _bags, a=(2, 9), b=(2, 24), c=(1, 20), d=(2, 10)),
    _problem("{p} saves {a} dollars a week for {b} weeks and spends {c} dollars on {item}. {q} gives {p} {d} "
             "dollars. How much money does {p} have now?", 3, _savings, a=(2, 50), b=(2, 20), c=(1, 100),
             d=(1, 100)),
    _problem("{p} buys {a} packs of {b} {item} and {c} packs of {d} {item}, then splits them into {e} equal "
             "groups. How many {item} are in each group?", 4, _groups, a=(2, 9), b=(2, 20), c=(2, 9),
             d=(2, 20), e=(2, 10)),
    _problem("A bus has {a} rows of {b} seats and {c} seats are broken. {d} people get on, then {e} get off. "
             "How many working seats are empty?", 4, _seats, a=(5, 20), b=(2, 6), c=(1, 10), d=(1, 60),
             e=(0, 30)),
    _problem("{p} picks {a} {item} a day for {b} days and {q} picks {c} a day for {d} days. They sell {e} "
             "{item}. How many {item} are left?", 4, _picking, a=(2, 30), b=(2, 10), c=(2, 30), d=(2, 10),
             e=(1, 100)),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Arithmetic(Task):
    """Multi-step word problems. Input: the question. Output: one sentence of equations, then `#### <answer>`.

    Difficulty: `steps`, the number of arithmetic steps (int or inclusive range within 2..4); a problem template
    with that many steps is drawn uniformly. Only the number after the last `####` is scored.
    """

    name = "arithmetic"
    steps: int | tuple[int, int] = (2, 4)

    def __post_init__(self):
        object.__setattr__(self, "steps", as_range(self.steps, "steps", 2, 4))

    @property
    def max_output_chars(self) -> int:
        return MAX_OUTPUT

    def sample(self, rng: random.Random) -> Example | None:
        problem = rng.choice([p for p in PROBLEMS if self.steps[0] <= p.steps <= self.steps[1]])
        values = problem.question.draw(rng)
        if "q" in values and values["q"] == values["p"]:
            return None
        try:
            solution, answer = problem.solve(values)
        except _Invalid:
            return None
        output = f"{solution}\n#### {answer}"
        return Example(input=problem.question.fill(values), output=output) if len(output) <= MAX_OUTPUT else None

    def score(self, input: str, output: str) -> bool:
        _, marker, tail = output.rpartition("####")
        if not marker or not ANSWER.fullmatch(tail.strip()):
            return False
        for problem in PROBLEMS:
            values = problem.question.parse(input.strip())
            if values is not None:
                try:
                    return problem.solve(values)[1] == int(tail.strip())
                except _Invalid:
                    return False
        return False
