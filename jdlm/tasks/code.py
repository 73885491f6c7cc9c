"""Short Python functions from a one-line description, scored by calling the candidate in jdlm's sandbox."""

from __future__ import annotations

import dataclasses
import random
import string
from collections.abc import Callable
from typing import Any, ClassVar

from jdlm import sandbox
from jdlm.tasks.base import Example, Task, Template

TIMEOUT_S = 5.0
MEMORY_LIMIT = 1 << 30  # bytes of address space for the candidate's process
ARGS = {"int": ("x", "n", "a", "num"), "str": ("s", "text", "word"), "list": ("xs", "nums", "values")}
CASES = {"int": (0, 1, 7, -3, 42, 100),
         "str": ("", "a", "ab", "abba", "banana", "hello world", "racecar"),
         "list": ([], [5], [1, 2, 3, 4], [-6, 10, 7, 0], [8, 8, 3, -2, 6], [25, 13, 42, 9])}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Function:
    """A description template `{f}({a}): ...` and the body that implements it; both share the fields.

    `cases(values)` lists the single arguments the tests call the function with.
    """

    describe: Template
    body: str
    cases: Callable[[dict[str, Any]], tuple]

    def source(self, values: dict[str, Any]) -> str:
        return f"def {values['f']}({values['a']}):\n    {self.body.format(**values)}"

    @property
    def max_source_chars(self) -> int:
        # Fields vary in length independently (ranges are non-negative), so the longest words and the largest
        # numbers together give the longest source.
        words, ints = self.describe.words, self.describe.ints
        return len(self.source({k: max(c, key=len) for k, c in words.items()} | {k: hi for k, (_, hi) in ints.items()}))


def _function(kind: str, describe: str, body: str, cases=None, **fields: tuple) -> Function:
    """A Function over one argument of `kind`; a field given as (int, int) is a range, else a tuple of words."""
    ints = {k: v for k, v in fields.items() if isinstance(v[0], int)}
    words = {k: v for k, v in fields.items() if k not in ints} | {"a": ARGS[kind]}
    return Function(describe=Template(text=describe, ints=ints, words=words), body=body,
                    cases=cases or (lambda v: CASES[kind]))


FUNCTIONS = {
    "add": _function("int", "{f}({a}): return {a} plus {k}", "return {a} + {k}",
                     f=("add", "plus", "inc", "shift"), k=(1, 99)),
    "mul": _function("int", "{f}({a}): return {a} times {k}", "return {a} * {k}",
                     f=("times", "mul", "scale"), k=(2, 20)),
    "affine": _function("int", "{f}({a}): return {a} times {k} plus {m}", "return {a} * {k} + {m}",
                        f=("affine", "line", "lin"), k=(2, 9), m=(1, 99)),
    "extreme": _function("list", "{f}({a}): return the {m} of the numbers in {a}", "return {m}({a})",
                         cases=lambda v: CASES["list"][1:], f=("pick", "extreme", "best"), m=("max", "min")),
    "count_char": _function("str", "{f}({a}): return how many times '{c}' occurs in {a}", "return {a}.count('{c}')",
                            cases=lambda v: CASES["str"] + (v["c"], 3 * v["c"] + "b"),
                            f=("count", "tally", "occurrences"), c=tuple(string.ascii_lowercase)),
    "reverse": _function("str", "{f}({a}): return {a} reversed", "return {a}[::-1]",
                         f=("reverse", "flip", "backwards", "rev")),
    "sum_div": _function("list", "{f}({a}): return the sum of the numbers in {a} divisible by {k}",
                         "return sum(v for v in {a} if v % {k} == 0)", f=("sum_div", "total", "sum_multiples"),
                         k=(2, 9)),
    "clamp": _function("int", "{f}({a}): return {a} clamped to the range {lo} to {hi}",
                       "return min(max({a}, {lo}), {hi})",
                       cases=lambda v: CASES["int"] + (v["lo"] - 1, v["lo"], v["hi"], v["hi"] + 1),
                       f=("clamp", "clip", "bound"), lo=(0, 50), hi=(51, 100)),
    "palindrome": _function("str", "{f}({a}): return True if {a} reads the same backwards, else False",
                            "return {a} == {a}[::-1]", f=("is_palindrome", "palindrome", "is_pal")),
    "count_above": _function("list", "{f}({a}): return how many numbers in {a} are greater than {k}",
                             "return sum(1 for v in {a} if v > {k})",
                             cases=lambda v: CASES["list"] + ([v["k"] - 1, v["k"], v["k"] + 1],),
                             f=("count_above", "above", "n_greater"), k=(0, 50)),
    "repeat": _function("str", "{f}({a}): return {a} repeated {k} times", "return {a} * {k}",
                        f=("repeat", "copies", "echo"), k=(2, 9)),
    "suffix": _function("str", "{f}({a}): return the last {k} characters of {a}", "return {a}[-{k}:]",
                        f=("last", "tail", "suffix"), k=(1, 9)),
}


def run_tests(source: str, name: str, cases: list[tuple[tuple, Any]], timeout_s: float = TIMEOUT_S) -> bool:
    """Whether function `name` defined by `source` returns each `want` (same type, ==) for its `args`.

    The candidate runs in `jdlm.sandbox` and only returns values; they are compared here, where the candidate
    cannot reach. False on any error, a wrong answer, a timeout, or a sandbox that cannot start.
    """
    limits = sandbox.Limits(timeout_s=timeout_s, memory_bytes=MEMORY_LIMIT)
    try:
        replies = sandbox.call_function(source, name, [args for args, _ in cases], limits=limits)
    except OSError:  # no scratch folder or interpreter: nothing ran, so nothing passed
        return False
    return replies is not None and all(reply.ok and type(reply.value) is type(want) and reply.value == want
                                       for reply, (_, want) in zip(replies, cases, strict=True))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Code(Task):
    """Write a one-line Python function. Input: `name(arg): description`. Output: `def name(arg):\\n    return ...`.

    The unit tests are not stored: `score` re-derives them from the description, runs our reference in-process
    for the expected values and the candidate in `jdlm.sandbox` (timeout 5 s). Scoring runs model-written code:
    the evaluation entry points ask for consent first (`runs_generated_code`). Difficulty: `functions`, the
    templates to draw from (default all of FUNCTIONS).
    """

    name = "code"
    runs_generated_code: ClassVar[bool] = True
    functions: tuple[str, ...] = tuple(FUNCTIONS)

    def __post_init__(self):
        functions = (self.functions,) if isinstance(self.functions, str) else tuple(self.functions)
        unknown = [f for f in functions if f not in FUNCTIONS]
        if not functions or unknown:
            raise ValueError(f"functions must be a non-empty subset of {tuple(FUNCTIONS)}, got {self.functions!r}")
        object.__setattr__(self, "functions", functions)

    @property
    def max_output_chars(self) -> int:
        return max(FUNCTIONS[f].max_source_chars for f in self.functions)

    def sample(self, rng: random.Random) -> Example:
        function = FUNCTIONS[rng.choice(self.functions)]
        values = function.describe.draw(rng)
        return Example(input=function.describe.fill(values), output=function.source(values))

    def score(self, input: str, output: str) -> bool:
        for function in FUNCTIONS.values():
            values = function.describe.parse(input.strip())
            if values is not None:
                namespace: dict[str, Any] = {}
                exec(function.source(values), namespace)  # our own template, with fields checked by parse
                reference = namespace[values["f"]]
                try:
                    cases = [((arg,), reference(arg)) for arg in function.cases(values)]
                except Exception:  # an input outside the template's ranges (--data): "divisible by 0"
                    return False
                return run_tests(output.strip(), values["f"], cases)
        return False
