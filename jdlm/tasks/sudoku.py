"""4x4 sudoku (2x2 boxes) with a unique solution: fill the blanks (0) so every row, column and box holds 1-4."""

from __future__ import annotations

import dataclasses
import random

from jdlm.tasks.base import Example, Task, as_range
from jdlm.tasks.grids import parse_rows

N = 4  # grid side; boxes are 2x2
MAX_BLANKS = 12  # a 4x4 sudoku needs at least 4 givens to have a unique solution
UNITS = ([[4 * r + c for c in range(N)] for r in range(N)]  # rows
         + [[4 * r + c for r in range(N)] for c in range(N)]  # columns
         + [[4 * (br + r) + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)])  # boxes
PEERS = [sorted({j for unit in UNITS if i in unit for j in unit} - {i}) for i in range(N * N)]
TRIES = 1000  # (grid, blank cells) pairs tried before a draw is rejected; 12 blanks are unique about 1 time in 20


def _solved_grids(grid: list[int]) -> list[list[int]]:
    """Every completion of a flat grid (0 = blank), in a fixed order."""
    if 0 not in grid:
        return [list(grid)]
    i = grid.index(0)
    return [g for d in range(1, N + 1) if all(grid[j] != d for j in PEERS[i])
            for g in _solved_grids(grid[:i] + [d] + grid[i + 1:])]


# All 288 solved 4x4 grids. Drawing from this list is uniform, which shuffling one pattern grid (digits, bands,
# stacks, rows, columns, transpose) is not: that reaches only 192 of them.
SOLVED = _solved_grids([0] * (N * N))


def count_solutions(grid: list[int], limit: int = 2) -> int:
    """Number of completions of a flat grid (0 = blank), counting no further than `limit`."""
    if 0 not in grid:
        return 1
    i = grid.index(0)
    found = 0
    for d in range(1, N + 1):
        if all(grid[j] != d for j in PEERS[i]):
            grid[i] = d
            found += count_solutions(grid, limit - found)
            grid[i] = 0
            if found >= limit:
                break
    return found


def _format(grid: list[int]) -> str:
    return "\n".join("".join(map(str, grid[4 * r:4 * r + 4])) for r in range(N))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sudoku(Task):
    """4x4 sudoku. Input: four lines of four digits, 0 for a blank. Output: the solved grid in the same form.

    Difficulty: `blanks`, the number of blank cells (int or inclusive range, at most 12), drawn uniformly per
    example. Every puzzle has exactly one solution; the scorer accepts any valid grid that keeps the givens.
    """

    name = "sudoku"
    blanks: int | tuple[int, int] = (4, 12)

    def __post_init__(self):
        object.__setattr__(self, "blanks", as_range(self.blanks, "blanks", 0, MAX_BLANKS))

    @property
    def max_output_chars(self) -> int:
        return N * N + N - 1

    def sample(self, rng: random.Random) -> Example | None:
        k = rng.randint(*self.blanks)  # drawn before any rejection, so that rejections do not skew it
        for _ in range(TRIES):
            solution = rng.choice(SOLVED)
            puzzle = list(solution)
            for i in rng.sample(range(N * N), k):
                puzzle[i] = 0
            if count_solutions(puzzle) == 1:
                return Example(input=_format(puzzle), output=_format(solution))
        return None

    def score(self, input: str, output: str) -> bool:
        puzzle, grid = parse_rows(input, N, "01234"), parse_rows(output, N, "1234")
        if puzzle is None or grid is None:
            return False
        keeps_givens = all(p in (0, g) for p, g in zip(puzzle, grid))
        return keeps_givens and all({grid[i] for i in unit} == {1, 2, 3, 4} for unit in UNITS)
