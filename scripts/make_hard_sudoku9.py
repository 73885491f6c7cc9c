"""Sparse 9x9 sudoku (22-28 givens by default) of the eval split, as a jsonl file for `eval_tiny.py --examples`.

`jdlm.tasks.sudoku9` blanks random cells and keeps the puzzle only if its solution is unique: the right draw for
30-40 givens, but below 30 almost no random pattern is unique and generation crawls (about 10 minutes for a dozen
puzzles on one core). Here cells are blanked one at a time in random order, each kept blank only if the solution
stays unique (greedy removal, the usual way to make hard puzzles), until the drawn number of givens is reached; a
solved grid that cannot get that sparse is drawn again. The puzzles are therefore not distributed like the task's
(greedy removal tends to leave its givens more spread out), which matters little for what the file is for: a
harder held-out ground for comparing decoding strategies. Only puzzles of the eval split are kept (the task's own
`split_of` on the puzzle), so none was trained on.

    python scripts/make_hard_sudoku9.py --n 48 --out docs/eval/hard/sudoku9_22-28.jsonl
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from jdlm.tasks import TASKS
from jdlm.tasks.base import Example, save_jsonl, split_of
from jdlm.tasks.sudoku9 import (
    CELLS,
    MIN_GIVENS,
    count_solutions,
    format_grid,
    random_solution,
)


def sparse_puzzle(rng: random.Random, givens: int) -> tuple[list[int], list[int]] | None:
    """(puzzle, solution) with exactly `givens` filled cells and one solution, or None if this grid stops short."""
    solution = random_solution(rng)
    puzzle = list(solution)
    filled = CELLS
    for i in rng.sample(range(CELLS), CELLS):
        if filled == givens:
            return puzzle, solution
        puzzle[i] = 0
        if count_solutions(puzzle) == 1:
            filled -= 1
        else:
            puzzle[i] = solution[i]
    return (puzzle, solution) if filled == givens else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=48, help="puzzles (default 48)")
    p.add_argument("--givens", type=int, nargs=2, default=(22, 28), metavar=("MIN", "MAX"),
                   help="filled cells, drawn uniformly per puzzle (default 22 28)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the jsonl file to write")
    args = p.parse_args(argv)
    low, high = args.givens
    if not MIN_GIVENS <= low <= high < CELLS:
        p.error(f"--givens must satisfy {MIN_GIVENS} <= MIN <= MAX < {CELLS}")
    task, rng, examples, seen, started = TASKS["sudoku9"], random.Random(args.seed), [], set(), time.time()
    while len(examples) < args.n:
        drawn = sparse_puzzle(rng, rng.randint(low, high))
        if drawn is None:
            continue
        puzzle, solution = drawn
        example = Example(input=format_grid(puzzle), output=format_grid(solution))
        key = task.split_key(example.input)
        if key in seen or split_of(key) != "eval":
            continue
        seen.add(key)
        examples.append(example)
        print(f"{len(examples)}/{args.n} puzzles, {time.time() - started:.0f}s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_jsonl(args.out, examples)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
