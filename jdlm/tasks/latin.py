"""5x5 Latin squares with several valid completions: a ground where decoding strategies differ (issue 20)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
from collections.abc import Iterator

from jdlm.tasks.base import Example, Task, as_formats, as_range
from jdlm.tasks.grids import parse_cells, parse_rows

N = 5
CELLS = N * N
DIGITS = "12345"
FORMATS = ("grid", "dots", "line")  # five lines of five digits, 0 for a blank; the same with '.'; 25 on one line
ROW = [i // N for i in range(CELLS)]
COL = [i % N for i in range(CELLS)]
PEERS = [[j for j in range(CELLS) if j != i and (ROW[j] == ROW[i] or COL[j] == COL[i])] for i in range(CELLS)]
N_SQUARES = 161_280  # 5x5 Latin squares: 56 reduced ones x 5! column orders x 4! orders of rows 2-5


def _clashes(grid: list[int]) -> bool:
    """Whether two filled cells of one row or column hold the same digit."""
    return any(d and any(grid[j] == d for j in PEERS[i]) for i, d in enumerate(grid))


def completions(grid: list[int]) -> Iterator[tuple[int, ...]]:
    """Every completion of a flat 25-cell grid (0 = blank) to a Latin square, as flat tuples in lexicographic
    order; none if the givens already clash."""
    if _clashes(grid):
        return
    grid = list(grid)

    def fill() -> Iterator[tuple[int, ...]]:
        if 0 not in grid:
            yield tuple(grid)
            return
        i = grid.index(0)
        for d in range(1, N + 1):
            if all(grid[j] != d for j in PEERS[i]):
                grid[i] = d
                yield from fill()
                grid[i] = 0

    yield from fill()


def count_solutions(grid: list[int], limit: int = 2) -> int:
    """Number of completions of a flat 25-cell grid (0 = blank), counting no further than `limit`."""
    return sum(1 for _ in itertools.islice(completions(grid), limit))


@functools.cache
def reduced_squares() -> tuple[tuple[int, ...], ...]:
    """The 56 reduced 5x5 Latin squares (first row and first column 1-5 in order), flat, row-major."""
    skeleton = [c + 1 if r == 0 else r + 1 if c == 0 else 0 for r in range(N) for c in range(N)]
    return tuple(completions(skeleton))


def random_square(rng: random.Random) -> list[int]:
    """A Latin square drawn uniformly from all 161,280: a reduced square R, then rows 2-5 and the columns reordered.

    Uniform because (R, column order, order of rows 2-5) -> square is a bijection: from any square, the one column
    order that puts its first row in order, then the one order of rows 2-5 that puts its first column in order,
    give back R. Returns a flat list of 25 digits.
    """
    reduced = rng.choice(reduced_squares())
    rows = [0] + rng.sample(range(1, N), N - 1)
    cols = rng.sample(range(N), N)
    return [reduced[N * r + c] for r in rows for c in cols]


def format_grid(grid: list[int], style: str = "grid") -> str:
    """A flat grid as text: "grid" five lines of five digits (0 blank), "dots" the same with '.', "line" one line."""
    text = "".join(map(str, grid))
    if style == "line":
        return text
    lines = "\n".join(text[N * r:N * r + N] for r in range(N))
    return lines.replace("0", ".") if style == "dots" else lines


def parse_puzzle(text: str) -> list[int] | None:
    """A flat grid from a puzzle in any of FORMATS (whitespace ignored, 0 or '.' for blanks), or None."""
    return parse_cells(text, CELLS, DIGITS, "0.")


def parse_answer(text: str) -> list[int] | None:
    """A flat grid from an answer of five lines of five digits 1-5 (surrounding whitespace ignored), or None."""
    return parse_rows(text, N, DIGITS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Latin(Task):
    """5x5 Latin square. Input: the partial square in one of FORMATS. Output: a completed square, five lines of five.

    Every row and column holds 1-5 once (no boxes). With few givens a puzzle has many completions, and the scorer
    accepts any of them: a decoder that commits many cells in one step, each from its own marginal, can take cells
    of different completions (each likely, together a clash), while one cell per step, each conditioned on the
    cells already committed, can follow one completion to the end.

    The square is uniform over all 5x5 Latin squares (`random_square`) and the given cells a uniform random set,
    independent of it, so the reference output is a uniform random completion of the givens. No draw is rejected.

    Difficulty: `givens`, the number of filled cells (int or inclusive range, 0..25), drawn uniformly per example:
    fewer givens, more valid answers (at the default 4-12 about 80% of puzzles have two or more; with 5 or fewer
    givens every puzzle does). `formats`: the input styles drawn from ("grid" by default).
    """

    name = "latin"
    givens: int | tuple[int, int] = (4, 12)
    formats: tuple[str, ...] = ("grid",)

    def __post_init__(self):
        object.__setattr__(self, "givens", as_range(self.givens, "givens", 0, CELLS))
        object.__setattr__(self, "formats", as_formats(self.formats, FORMATS))

    @property
    def max_output_chars(self) -> int:
        return CELLS + N - 1  # five rows of five and four newlines

    def sample(self, rng: random.Random) -> Example:
        givens = rng.randint(*self.givens)
        square = random_square(rng)
        kept = set(rng.sample(range(CELLS), givens))
        puzzle = [d if i in kept else 0 for i, d in enumerate(square)]
        return Example(input=format_grid(puzzle, rng.choice(self.formats)), output=format_grid(square))

    def split_key(self, input: str) -> str:
        grid = parse_puzzle(input)
        return input if grid is None else format_grid(grid, "line")

    def score(self, input: str, output: str) -> bool:
        puzzle, grid = parse_puzzle(input), parse_answer(output)
        if puzzle is None or grid is None:
            return False
        keeps_givens = all(p in (0, g) for p, g in zip(puzzle, grid))
        return keeps_givens and not _clashes(grid)
