"""9x9 sudoku with a unique solution: fill the blanks so every row, column and 3x3 box holds 1-9."""

from __future__ import annotations

import dataclasses
import random

from jdlm.tasks.base import Example, Task, as_formats, as_range
from jdlm.tasks.grids import parse_cells

N = 9
CELLS = N * N
ALL_DIGITS = 0b1111111110  # bits 1..9
MIN_GIVENS = 17  # no 9x9 sudoku with fewer givens has a unique solution
ROW = [i // N for i in range(CELLS)]
COL = [i % N for i in range(CELLS)]
BOX = [3 * (i // 27) + (i % N) // 3 for i in range(CELLS)]
TRIES = 50  # blank patterns tried on one solved grid before the draw is rejected
GREEDY_BELOW = 30  # fewer givens: blank cells one at a time (random blank patterns this sparse are almost never unique)
FORMATS = ("line", "dots", "grid")  # 81 digits with 0 for a blank; the same with '.'; nine lines of nine
SEARCH_LIMIT = 20_000  # search nodes before count_solutions gives up (returns `limit`, i.e. "not unique")


def _digits(mask: int) -> list[int]:
    return [d for d in range(1, N + 1) if mask >> d & 1]


class _Board:
    """A grid with the used digits of each row, column and box as bitmasks, for a depth-first search."""

    def __init__(self, grid: list[int]):
        self.grid = list(grid)
        self.rows, self.cols, self.boxes = [0] * N, [0] * N, [0] * N
        self.valid = True
        for i, d in enumerate(self.grid):
            if d:
                bit = 1 << d
                if (self.rows[ROW[i]] | self.cols[COL[i]] | self.boxes[BOX[i]]) & bit:
                    self.valid = False
                self._set(i, d)
        self.nodes = 0

    def _set(self, i: int, d: int) -> None:
        bit = 1 << d
        self.grid[i] = d
        self.rows[ROW[i]] |= bit
        self.cols[COL[i]] |= bit
        self.boxes[BOX[i]] |= bit

    def _unset(self, i: int, d: int) -> None:
        bit = ~(1 << d)
        self.grid[i] = 0
        self.rows[ROW[i]] &= bit
        self.cols[COL[i]] &= bit
        self.boxes[BOX[i]] &= bit

    def _most_constrained(self) -> tuple[int, int] | None:
        """(cell, candidate mask) of the blank with the fewest candidates; None when full; mask 0 = dead end."""
        best, best_mask, best_n = None, 0, 10
        for i in range(CELLS):
            if self.grid[i]:
                continue
            mask = ALL_DIGITS & ~(self.rows[ROW[i]] | self.cols[COL[i]] | self.boxes[BOX[i]])
            n = mask.bit_count()
            if n < best_n:
                best, best_mask, best_n = i, mask, n
                if n <= 1:
                    break
        return None if best is None else (best, best_mask)

    def count(self, limit: int) -> int:
        """Completions of the grid, counting no further than `limit` (and `limit` once the search is too long)."""
        self.nodes += 1
        if self.nodes > SEARCH_LIMIT:
            return limit
        choice = self._most_constrained()
        if choice is None:
            return 1
        i, mask = choice
        found = 0
        for d in _digits(mask):
            self._set(i, d)
            found += self.count(limit - found)
            self._unset(i, d)
            if found >= limit:
                break
        return found

    def fill(self, rng: random.Random) -> bool:
        """Completes the grid with digits tried in random order; False if it has no completion."""
        choice = self._most_constrained()
        if choice is None:
            return True
        i, mask = choice
        digits = _digits(mask)
        rng.shuffle(digits)
        for d in digits:
            self._set(i, d)
            if self.fill(rng):
                return True
            self._unset(i, d)
        return False


def count_solutions(grid: list[int], limit: int = 2) -> int:
    """Number of completions of a flat 81-cell grid (0 = blank), counting no further than `limit`.

    A grid whose givens already clash has 0. A search longer than SEARCH_LIMIT nodes reports `limit` (treated as
    "not unique"); puzzles with 17+ givens that humans solve finish in far fewer.
    """
    board = _Board(grid)
    return board.count(limit) if board.valid else 0


def random_solution(rng: random.Random) -> list[int]:
    """A solved grid drawn by a randomised depth-first fill: any of the 6.7e21 grids can come out."""
    board = _Board([0] * CELLS)
    board.fill(rng)
    return board.grid


def random_blanks(solution: list[int], givens: int, rng: random.Random) -> list[int] | None:
    """A puzzle of `solution` with `givens` filled cells and one solution: random blank patterns, up to TRIES of
    them; None if none is unique (rare at 30+ givens, nearly always below)."""
    for _ in range(TRIES):
        puzzle = list(solution)
        for i in rng.sample(range(CELLS), CELLS - givens):
            puzzle[i] = 0
        if count_solutions(puzzle) == 1:
            return puzzle
    return None


def greedy_blanks(solution: list[int], givens: int, rng: random.Random) -> list[int] | None:
    """A puzzle of `solution` with `givens` filled cells and one solution, blanked one cell at a time in random
    order, each cell kept blank only if the solution stays unique (greedy removal, the usual way to make hard
    puzzles); None if this grid stops short of `givens`. About a second a puzzle at 22-28 givens on one core.
    Its puzzles are not distributed like `random_blanks`' (their givens tend to be more spread out)."""
    puzzle, filled = list(solution), CELLS
    for i in rng.sample(range(CELLS), CELLS):
        if filled == givens:
            break
        puzzle[i] = 0
        if count_solutions(puzzle) == 1:
            filled -= 1
        else:
            puzzle[i] = solution[i]
    return puzzle if filled == givens else None


def random_symmetry(rng: random.Random):
    """A random map of solved grids to solved grids that keeps uniqueness and the number of givens: relabel the
    digits, permute bands, rows within bands, stacks and columns within stacks, and maybe transpose.

    Returns f(flat grid) -> flat grid.
    """
    def lines() -> list[int]:
        bands = rng.sample(range(3), 3)
        return [3 * b + r for b in bands for r in rng.sample(range(3), 3)]

    rows, cols, transpose = lines(), lines(), rng.random() < 0.5
    relabel = [0] + rng.sample(range(1, N + 1), N)
    source = [N * c + r if transpose else N * r + c for r in rows for c in cols]
    return lambda grid: [relabel[grid[i]] for i in source]


def format_grid(grid: list[int], style: str = "line") -> str:
    """A flat grid as text: "line" 81 digits (0 blank), "dots" the same with '.', "grid" nine lines of nine."""
    text = "".join(map(str, grid))
    if style == "dots":
        return text.replace("0", ".")
    if style == "grid":
        return "\n".join(text[N * r:N * r + N] for r in range(N))
    return text


def parse_grid(text: str, blanks: str = "0.") -> list[int] | None:
    """A flat grid from 81 cells written in any of FORMATS (whitespace ignored), or None."""
    return parse_cells(text, CELLS, "123456789", blanks)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sudoku9(Task):
    """9x9 sudoku. Input: the puzzle in one of FORMATS. Output: the solved grid as one line of 81 digits.

    Difficulty: `givens`, the number of filled cells (int or inclusive range, 17..80), drawn uniformly per
    example: fewer givens need longer chains of deduction. Below GREEDY_BELOW (30) givens the blanks are chosen
    greedily (`greedy_blanks`, about a second a puzzle), from 30 on at random (`random_blanks`, milliseconds).
    `formats`: the input styles drawn from (the public sets' style "line" by default; training mixes all three).
    Every puzzle has exactly one solution; the scorer accepts any valid grid that keeps the givens.
    """

    name = "sudoku9"
    givens: int | tuple[int, int] = (30, 40)
    formats: tuple[str, ...] = ("line",)
    variants: int = 1  # puzzles returned per search: the found one, then random symmetries of it (cheap data)

    def __post_init__(self):
        object.__setattr__(self, "givens", as_range(self.givens, "givens", MIN_GIVENS, CELLS - 1))
        object.__setattr__(self, "formats", as_formats(self.formats, FORMATS))
        if not isinstance(self.variants, int) or self.variants < 1:
            raise ValueError(f"variants must be a positive int, got {self.variants!r}")

    @property
    def max_output_chars(self) -> int:
        return CELLS

    def sample(self, rng: random.Random) -> list[Example] | None:
        givens = rng.randint(*self.givens)  # drawn before any rejection, so that rejections do not skew it
        solution = random_solution(rng)
        puzzle = (random_blanks if givens >= GREEDY_BELOW else greedy_blanks)(solution, givens, rng)
        if puzzle is None:
            return None
        examples = []
        for v in range(self.variants):
            f = (lambda grid: grid) if v == 0 else random_symmetry(rng)
            examples.append(Example(input=format_grid(f(puzzle), rng.choice(self.formats)),
                                    output=format_grid(f(solution))))
        return examples

    def split_key(self, input: str) -> str:
        grid = parse_grid(input)
        return input if grid is None else format_grid(grid)

    def score(self, input: str, output: str) -> bool:
        puzzle, grid = parse_grid(input), parse_grid(output, blanks="")
        if puzzle is None or grid is None:
            return False
        if any(p not in (0, g) for p, g in zip(puzzle, grid)):
            return False
        full = set(range(1, N + 1))
        return all({grid[j] for j in range(CELLS) if key[j] == k} == full
                   for key in (ROW, COL, BOX) for k in range(N))
