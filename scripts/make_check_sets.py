"""Check sets in public formats, made by generators other than the training ones, from the eval split only.

Training draws only train-split instances (by `Task.split_key`), so these files are never seen in training; and
since they come from other procedures than `Task.sample`, they also test whether a model learned the task or our
generator:
  countdown_N.jsonl  {"nums": [...], "target": T} as in the TinyZero / Stream-of-Search sets: the target drawn
                     uniformly from 1..100 first, then the numbers uniformly from 1..99, kept if a solution exists
                     (the training generator derives the target from the numbers instead).
  sudoku9.csv        Kaggle's "quizzes,solutions" (81 characters, 0 for a blank): cells removed one by one in
                     random order while the solution stays unique, down to a drawn number of givens (the training
                     generator removes a random set of cells at once and keeps unique results).

    python scripts/make_check_sets.py --out docs/eval/check --n 200
    jdlm eval --data docs/eval/check/countdown_4.jsonl --model tiny
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

from jdlm.tasks import TASKS, split_of
from jdlm.tasks.countdown import find_solutions
from jdlm.tasks.sudoku9 import CELLS, count_solutions, format_grid, random_solution

FULL_SEARCH = 10**7  # search nodes: enough to decide any 5-number instance


def countdown_set(n_sources: int, n: int, rng: random.Random) -> list[dict]:
    task, rows = TASKS["countdown"], []
    while len(rows) < n:
        target = rng.randint(1, 100)
        nums = [rng.randint(1, 99) for _ in range(n_sources)]
        text = ",".join(map(str, nums + [target]))
        if split_of(task.split_key(text)) != "eval":
            continue
        solutions = find_solutions(nums, target, 1, rng, max_nodes=FULL_SEARCH)
        if solutions:
            rows.append({"nums": nums, "target": target, "solution": solutions[0]})
    return rows


def sudoku_by_removal(rng: random.Random, givens: int) -> tuple[list[int], list[int]]:
    solution = random_solution(rng)
    puzzle = list(solution)
    for i in rng.sample(range(CELLS), CELLS):
        if CELLS - puzzle.count(0) <= givens:
            break
        puzzle[i] = 0
        if count_solutions(puzzle) != 1:
            puzzle[i] = solution[i]
    return puzzle, solution


def sudoku_set(n: int, rng: random.Random, givens: tuple[int, int]) -> list[tuple[str, str]]:
    task, rows = TASKS["sudoku9"], []
    while len(rows) < n:
        puzzle, solution = sudoku_by_removal(rng, rng.randint(*givens))
        quiz = format_grid(puzzle)
        if split_of(task.split_key(quiz)) == "eval" and CELLS - puzzle.count(0) >= givens[0]:
            rows.append((quiz, format_grid(solution)))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the files (created)")
    p.add_argument("--n", type=int, default=200, help="examples per file")
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for n_sources in (3, 4, 5):
        rows = countdown_set(n_sources, args.n, rng)
        path = out / f"countdown_{n_sources}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {path} ({len(rows)})", flush=True)
    path = out / "sudoku9.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["quizzes", "solutions"])
        writer.writerows(sudoku_set(args.n, rng, TASKS["sudoku9"].givens))
    print(f"wrote {path} ({args.n})", flush=True)


if __name__ == "__main__":
    main()
