"""Digit grids as task text (sudoku, sudoku9, latin): flat row-major lists of cells, 0 for a blank."""

from __future__ import annotations


def parse_rows(text: str, side: int, digits: str) -> list[int] | None:
    """A flat grid from `side` lines of `side` characters in `digits` (surrounding whitespace ignored), or None."""
    lines = [line.strip() for line in text.strip().split("\n")]
    if len(lines) != side or any(len(line) != side or any(ch not in digits for ch in line) for line in lines):
        return None
    return [int(ch) for line in lines for ch in line]


def parse_cells(text: str, cells: int, digits: str, blanks: str) -> list[int] | None:
    """A flat grid from `cells` characters of `digits` and `blanks` in any layout (whitespace ignored), a blank read
    as 0; None for anything else."""
    found = "".join(text.split())
    if len(found) != cells or any(ch not in digits + blanks for ch in found):
        return None
    return [0 if ch in blanks else int(ch) for ch in found]
