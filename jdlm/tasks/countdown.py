"""Countdown: combine every source number once with + - * / to reach the target, one equation per step."""

from __future__ import annotations

import ast
import dataclasses
import random
import re
from collections import Counter

from jdlm.tasks.base import Example, Task, as_formats, as_range

MAX_SOURCE = 99  # source numbers are drawn from 1..MAX_SOURCE
MAX_RESULT = 9999  # no equation may produce more than this
MAX_SOURCES = 8
OPS = "+-*/"
EQUATION = re.compile(r"([1-9][0-9]{0,3})([-+*/])([1-9][0-9]{0,3})=([1-9][0-9]{0,3})")  # positive, <= 4 digits
DERIVATIONS = 24  # random derivations per draw; the target is drawn from their distinct in-range results
SEARCH_NODES = 4000  # nodes the search for further solutions may visit per instance
NUMBER = r"[1-9][0-9]{0,3}"
# Input styles: `csv` is the canonical one (and what the public-format readers produce); training mixes all.
FORMATS = {
    "csv": ("{sources},{target}", ","),
    "arrow": ("{sources} -> {target}", " "),
    "words": ("numbers: {sources} target: {target}", " "),
    "sentence": ("Using the numbers [{sources}], create an equation that equals {target}.", ", "),
    "reach": ("Reach {target} with {sources}.", " "),
}
_PARSERS = [re.compile(re.escape(text).replace(re.escape("{sources}"), rf"(?P<s>{NUMBER}(?:{re.escape(sep)}{NUMBER})+)")
                       .replace(re.escape("{target}"), rf"(?P<t>{NUMBER})"))
            for text, sep in FORMATS.values()]


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


def parse_instance(text: str) -> tuple[list[int], int] | None:
    """(sources, target) from an input in any of FORMATS, or None."""
    text = text.strip()
    for parser in _PARSERS:
        match = parser.fullmatch(text)
        if match:
            return [int(n) for n in re.findall(NUMBER, match["s"])], int(match["t"])
    return None


def _moves(a: int, b: int) -> list[tuple[int, str, int]]:
    """The allowed equations on two numbers: (x, op, y) with the larger first for - and /."""
    moves = []
    for op in OPS:
        x, y = (max(a, b), min(a, b)) if op in "-/" else (a, b)
        if apply(x, op, y) is not None:
            moves.append((x, op, y))
    return moves


def random_derivation(sources: list[int], rng: random.Random) -> tuple[int, list[str]]:
    """(final result, equations) of combining random pairs with random allowed operations until one is left."""
    pool, equations = list(sources), []
    while len(pool) > 1:
        a, b = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
        x, op, y = rng.choice(_moves(a, b))  # never empty: a+b fits unless both are large, then a-b or a/a does
        result = apply(x, op, y)
        pool.append(result)
        equations.append(f"{x}{op}{y}={result}")
    return pool[0], equations


def find_solutions(sources: list[int], target: int, limit: int, rng: random.Random,
                   max_nodes: int = SEARCH_NODES) -> list[str]:
    """Up to `limit` distinct solutions (comma-joined equations) by a randomised depth-first search.

    Solutions that differ only in the operand order of + and * count once. The search stops after `max_nodes`
    nodes, so for five or more sources it may miss solutions that exist.
    """
    found, seen, nodes = [], set(), 0

    def search(pool: list[int], equations: list[str], canonical: list[str]) -> None:
        nonlocal nodes
        nodes += 1
        if len(pool) == 1:
            key = ",".join(sorted(canonical))
            if pool[0] == target and key not in seen:
                seen.add(key)
                found.append(",".join(equations))
            return
        pairs = [(i, j) for i in range(len(pool)) for j in range(i + 1, len(pool))]
        rng.shuffle(pairs)
        for i, j in pairs:
            moves = _moves(pool[i], pool[j])
            rng.shuffle(moves)
            rest = [n for k, n in enumerate(pool) if k not in (i, j)]
            for x, op, y in moves:
                if len(found) >= limit or nodes >= max_nodes:
                    return
                result = apply(x, op, y)
                lo, hi = (min(x, y), max(x, y)) if op in "+*" else (x, y)
                search(rest + [result], equations + [f"{x}{op}{y}={result}"],
                       canonical + [f"{hi}{op}{lo}={result}"])

    search(list(sources), [], [])
    return found


def _score_expression(text: str, sources: list[int], target: int) -> bool:
    """Whether `text` is one arithmetic expression over the sources (each once) that equals the target, every
    operation obeying the rules of `apply`."""
    try:
        tree = ast.parse(text.replace("×", "*").replace("÷", "/"), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # bad syntax, huge literals, deep nesting
        return False
    used = []

    def value(node) -> int | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return node.value
        if isinstance(node, ast.BinOp):
            op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}.get(type(node.op))
            a, b = value(node.left), value(node.right)
            return None if op is None or a is None or b is None else apply(a, op, b)
        return None

    return value(tree) == target and Counter(used) == Counter(sources)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Countdown(Task):
    """Reach a target from source numbers, each used exactly once.

    Input: the sources and the target in one of FORMATS, canonically comma-separated with the target last
    (`39,92,22,10,89`). Output: n_sources-1 comma-separated equations (`39+92=131,22*10=220,220-131=89`) whose
    operands are the sources and earlier results, each used exactly once; every result is a positive integer
    <= 9999, division is exact, and the last result is the target. One arithmetic expression with the same
    rules (`(92-39)*...`) is accepted too. The scorer checks the rules, so any valid solution passes.

    Difficulty: `n_sources`, the number of sources (int or inclusive range), drawn uniformly per example; sources
    are 1-99 and the target 1..`max_target` (the public sets' ranges). `formats`: the input styles drawn from.
    `solutions`: distinct solutions returned per instance (training uses several; 1 for evaluation).
    """

    name = "countdown"
    n_sources: int | tuple[int, int] = (3, 5)
    max_target: int = 100
    formats: tuple[str, ...] = ("csv",)
    solutions: int = 1

    def __post_init__(self):
        object.__setattr__(self, "n_sources", as_range(self.n_sources, "n_sources", 2, MAX_SOURCES))
        as_range(self.max_target, "max_target", 1, MAX_RESULT)
        object.__setattr__(self, "formats", as_formats(self.formats, FORMATS))
        if not isinstance(self.solutions, int) or self.solutions < 1:
            raise ValueError(f"solutions must be a positive int, got {self.solutions!r}")

    @property
    def max_output_chars(self) -> int:
        n_equations = self.n_sources[1] - 1
        return n_equations * len("9999*9999=9999,") - 1

    def sample(self, rng: random.Random) -> list[Example] | None:
        sources = [rng.randint(1, MAX_SOURCE) for _ in range(rng.randint(*self.n_sources))]
        witnesses: dict[int, list[str]] = {}
        for _ in range(DERIVATIONS):
            result, equations = random_derivation(sources, rng)
            if result <= self.max_target:
                witnesses.setdefault(result, equations)
        if not witnesses:
            return None
        target = rng.choice(sorted(witnesses))
        text, sep = FORMATS[rng.choice(self.formats)]
        input = text.format(sources=sep.join(map(str, sources)), target=target)
        outputs = [",".join(witnesses[target])]
        if self.solutions > 1:
            outputs += [s for s in find_solutions(sources, target, self.solutions, rng) if s != outputs[0]]
        return [Example(input=input, output=o) for o in outputs[:self.solutions]]

    def split_key(self, input: str) -> str:
        instance = parse_instance(input)
        return input if instance is None else ",".join(map(str, sorted(instance[0]) + [instance[1]]))

    def score(self, input: str, output: str) -> bool:
        instance = parse_instance(input)
        if instance is None or len(instance[0]) < 2:
            return False
        sources, target = instance
        output = output.strip()
        if "=" not in output:
            return _score_expression(output, sources, target)
        available = Counter(sources)
        equations = output.split(",")
        if len(equations) != len(sources) - 1:
            return False
        for equation in equations:
            match = EQUATION.fullmatch(equation.strip())
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
