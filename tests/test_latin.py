"""Tests for the latin task: uniform squares, several valid answers, a scorer that accepts any of them, formats.

The task-wide properties (determinism, split purity, own outputs scoring, malformed text) run for latin too in
tests/test_tasks.py, which parametrizes over every registered task.
"""

import collections
import itertools
import math
import random

import pytest

from jdlm.tasks import TASKS, Latin, latin, split_of

TASK = TASKS["latin"]
# Two completions of a puzzle whose only given is a 1 top left: the cyclic square, and its rows in another order.
CYCLIC = "12345\n23451\n34512\n45123\n51234"
SHIFTED = "12345\n34512\n51234\n23451\n45123"


def grid(text: str) -> list[int]:
    return latin.parse_puzzle(text)


def decompose(square: list[int]) -> tuple[tuple[int, ...], list[int], list[int]]:
    """(reduced square, column order, row order) with square[r][c] = reduced[rows[r]][cols[c]]: the inverse of
    random_square's composition, written independently of it."""
    n = latin.N
    cols = sorted(range(n), key=lambda c: square[c])  # the column holding 1, 2, ... in the first row
    first_col = [square[n * r + cols[0]] for r in range(n)]  # column order fixed, its first column
    rows = sorted(range(n), key=lambda r: first_col[r])
    reduced = tuple(square[n * r + c] for r in rows for c in cols)
    return reduced, [cols.index(i) for i in range(n)], [rows.index(i) for i in range(n)]


# ---------------------------------------------------------------------------------------------- uniform squares

def test_reduced_squares_and_the_count_identity():
    reduced = latin.reduced_squares()
    assert len(reduced) == len(set(reduced)) == 56
    assert all(r[:5] == (1, 2, 3, 4, 5) and r[::5] == (1, 2, 3, 4, 5) for r in reduced)
    assert all(latin.count_solutions(list(r)) == 1 for r in reduced)  # complete and valid
    assert 56 * math.factorial(5) * math.factorial(4) == latin.N_SQUARES == 161_280
    # Independently of the reduced squares: 1344 squares have the first row 12345, and each of the 5! first rows
    # is as common (relabel the digits), so there are 120 * 1344 squares in all.
    assert latin.count_solutions([1, 2, 3, 4, 5] + [0] * 20, limit=10**6) == 1344
    assert 120 * 1344 == latin.N_SQUARES


def test_every_square_comes_from_exactly_one_draw():
    """random_square's (reduced, column order, order of rows 2-5) -> square is injective: decompose inverts it.
    With 56 * 5! * 4! = 161280 inputs and 161280 squares, it is onto as well, so uniform draws give uniform squares."""
    rng = random.Random(0)
    inputs, squares = set(), set()
    for reduced in latin.reduced_squares():
        for _ in range(30):
            rows = [0] + rng.sample(range(1, 5), 4)
            cols = rng.sample(range(5), 5)
            square = [reduced[5 * r + c] for r in rows for c in cols]
            assert latin.count_solutions(square) == 1
            assert decompose(square) == (reduced, cols, rows)
            inputs.add((reduced, tuple(cols), tuple(rows)))
            squares.add(tuple(square))
    assert len(squares) == len(inputs) > 1600


def test_draws_are_valid_and_uniform_looking():
    rng = random.Random(1)
    draws = [latin.random_square(rng) for _ in range(5600)]
    assert all(latin.count_solutions(square) == 1 for square in draws[:200])
    assert len({tuple(s) for s in draws}) >= 5400  # ~95 repeats expected among 5600 of 161280
    top_left = collections.Counter(s[0] for s in draws)
    assert set(top_left) == {1, 2, 3, 4, 5} and all(980 <= c <= 1260 for c in top_left.values())  # 1120 +- 4.5 sd
    # Each reduced square is equally likely (1/56, 100 draws each): chi-square with 55 degrees of freedom, about 55
    # for uniform draws (p = 2e-4 at 100). A randomised backtracking fill scores 250-340 here; shuffling one pattern
    # square never leaves its class, so misses most of the 56.
    classes = collections.Counter(decompose(s)[0] for s in draws)
    chi_square = sum((classes[r] - 100) ** 2 / 100 for r in latin.reduced_squares())
    assert len(classes) == 56 and chi_square < 100


# ---------------------------------------------------------------------------------------------- several answers

def test_sparse_puzzles_have_several_solutions():
    counts = [latin.count_solutions(grid(e.input)) for e in TASK.generate("train", 200, givens=(4, 8))]
    assert sum(c >= 2 for c in counts) >= 0.9 * len(counts)
    assert all(c >= 1 for c in counts)  # the reference is always one
    default = [latin.count_solutions(grid(e.input)) for e in TASK.generate("train", 200)]
    assert sum(c >= 2 for c in default) >= 0.6 * len(default)  # at the default 4-12 givens, about 80%


def test_scorer_accepts_any_completion_and_nothing_else():
    puzzle = "10000\n00000\n00000\n00000\n00000"
    assert latin.count_solutions(grid(puzzle)) == 2  # limit 2: several
    assert CYCLIC != SHIFTED and TASK.score(puzzle, CYCLIC) and TASK.score(puzzle, SHIFTED)
    assert TASK.score(puzzle.replace("0", "."), CYCLIC) and TASK.score(puzzle.replace("\n", ""), SHIFTED)
    assert not TASK.score("20000" + puzzle[5:], CYCLIC)  # changes a given
    assert not TASK.score(puzzle, "12345\n23451\n34512\n45123\n51243")  # last row fine, two columns repeat
    assert not TASK.score(puzzle, "12345\n12345\n12345\n12345\n12345")  # rows fine, columns not
    for malformed in (CYCLIC.replace("\n", ""), CYCLIC[:-1], CYCLIC + "1", CYCLIC.replace("5", "6"),
                      CYCLIC.replace("1", "0"), CYCLIC.replace("\n", " \n", 1) + "\n12345"):
        assert not TASK.score(puzzle, malformed), malformed
    assert TASK.score(puzzle, "\n " + CYCLIC.replace("\n", " \n") + "\n")  # whitespace around lines tolerated


def test_other_completions_of_generated_puzzles_score():
    """No 5x5 puzzle with 5 givens has one solution (the smallest critical set of order 5 has 6 cells): each has
    completions besides its reference, and the scorer takes every one."""
    for e in TASK.generate("train", 50, givens=5):
        others = [s for s in itertools.islice(latin.completions(grid(e.input)), 50)
                  if latin.format_grid(list(s)) != e.output]
        assert others and TASK.score(e.input, e.output) and all(TASK.score(e.input, latin.format_grid(list(s)))
                                                                   for s in others)


def test_count_solutions_counts():
    assert latin.count_solutions(grid(CYCLIC)) == 1
    assert latin.count_solutions([1, 1] + [0] * 23) == 0  # givens clash
    assert latin.count_solutions([0] * 25, limit=7) == 7
    square = grid(CYCLIC)
    square[0] = square[6] = 0  # (0,0)=1 and (1,1)=3 blank: each is forced by its row
    assert latin.count_solutions(square, limit=10) == 1


# ---------------------------------------------------------------------------------------------- knobs and formats

@pytest.mark.parametrize("givens", [0, 7, (3, 5), 25], ids=["0", "7", "3-5", "25"])
def test_givens_knob(givens):
    lo, hi = (givens, givens) if isinstance(givens, int) else givens
    examples = TASK.generate("train", 1 if givens == 0 else 20, givens=givens)  # with no givens, one puzzle exists
    for e in examples:
        assert lo <= sum(1 for d in grid(e.input) if d) <= hi
        assert TASK.score(e.input, e.output)


def test_givens_default_range_is_covered():
    counts = {sum(1 for d in grid(e.input) if d) for e in TASK.generate("train", 300)}
    assert counts == set(range(4, 13))


@pytest.mark.parametrize("givens", [26, -1, (5, 4), (1, 2, 3)], ids=["26", "-1", "reversed", "triple"])
def test_rejects_bad_givens(givens):
    with pytest.raises(ValueError, match="givens"):
        Latin(givens=givens)


@pytest.mark.parametrize("formats", [(), ("grid", "csv"), ("square",)], ids=["empty", "unknown", "other"])
def test_rejects_bad_formats(formats):
    with pytest.raises(ValueError, match="formats"):
        Latin(formats=formats)


@pytest.mark.parametrize("style", latin.FORMATS)
def test_every_input_style_parses_and_scores(style):
    task = TASK.with_difficulty(formats=style)
    for e in task.generate("train", 20):
        assert task.score(e.input, e.output)
        assert len(e.output) == task.max_output_chars and e.output.count("\n") == 4
        lines = e.input.split("\n")
        assert (len(lines), len(lines[0])) == ((1, 25) if style == "line" else (5, 5))
        assert ("." in e.input) == (style == "dots") and ("0" in e.input) == (style != "dots")


def test_one_puzzle_in_three_styles_has_one_split_key():
    e = TASK.generate("eval", 1)[0]
    keys = {TASK.split_key(latin.format_grid(grid(e.input), style)) for style in latin.FORMATS}
    assert keys == {latin.format_grid(grid(e.input), "line")} and split_of(keys.pop()) == "eval"


def test_mixed_formats_keep_splits_disjoint():
    task = TASK.with_difficulty(formats=latin.FORMATS)
    train, eval_ = task.generate("train", 300), task.generate("eval", 40)
    train_keys, eval_keys = {task.split_key(e.input) for e in train}, {task.split_key(e.input) for e in eval_}
    assert len(train_keys) == 300 and len(eval_keys) == 40 and not train_keys & eval_keys
    # (has a newline, has a dot): grid (True, False), dots (True, True), line (False, False)
    styles = {("\n" in e.input, "." in e.input) for e in train}
    assert len(styles) == 3  # every style drawn
