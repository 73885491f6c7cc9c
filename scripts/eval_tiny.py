"""Evaluate the shipped `tiny` model: the quality bar (one token per step, low confidence) and an accuracy-vs-NFE
sweep across strategies. Writes Markdown tables, JSON and a Pareto plot to a fresh runs/eval-<time>/ folder.

    python scripts/eval_tiny.py --limit 20 --sweep-limit 0      # a quick look, a few minutes on a CPU
    python scripts/eval_tiny.py --out docs/eval                  # the committed tables (a GPU: ~10 min on an H200)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import jdlm
from jdlm import eval as E
from jdlm.tasks import TASKS
from jdlm.tasks.base import load_jsonl

BASELINE_VARIANTS = (  # (label, task, difficulty)
    ("sudoku", "sudoku", {}), ("sudoku9", "sudoku9", {}), ("countdown-3", "countdown", {"n_sources": 3}),
    ("countdown-4", "countdown", {"n_sources": 4}), ("countdown-5", "countdown", {"n_sources": 5}),
    ("arithmetic", "arithmetic", {}), ("multistep", "multistep", {}), ("code", "code", {}), ("latin", "latin", {}))


def selected(label: str, only) -> bool:
    """Whether a baseline label or sweep task runs: every one without --tasks, else those it names."""
    return only is None or label in only


def baseline(params, tok, limit: int, batch_size: int, run_code: bool = False, only=None) -> list:
    """The issue's quality bar: one-token-per-step low confidence on held-out data, per task and difficulty."""
    spec = E.EvalSpec(rule="low_confidence", tokens_per_step=1)
    variants = [v for v in BASELINE_VARIANTS if run_code or v[1] != "code"]
    variants = [v for v in variants if selected(v[0], only)]
    reports = []
    for label, name, difficulty in variants:
        examples = TASKS[name].generate("eval", limit, seed=0, **difficulty)
        report = E.evaluate(params, tok, name, spec, examples=examples, batch_size=batch_size,
                            allow_code_execution=run_code)
        reports.append(dataclasses.replace(report, task=label))
        print(E.format_table(reports[-1:]), flush=True)
    return reports


SWEEP_TASKS = ("sudoku", "sudoku9", "countdown", "arithmetic", "multistep", "code", "latin")


def sweep(params, tok, limit: int, batch_size: int, tasks=None, run_code: bool = False,
          examples: dict | None = None) -> list:
    """Accuracy against NFE: counted rules at 1-8 tokens per step, thresholds, factor, entropy and the caches (the dual
    cache also refreshed every 2 steps: on countdown the plain caches cost the shipped tiny 30 points, the refresh none;
    docs/eval/retrain3/README.md). `tasks`: names or Tasks, by default every one of SWEEP_TASKS.
    `examples` maps a task to its examples in place of the generated eval split."""
    tasks = SWEEP_TASKS if tasks is None else tasks
    specs = [E.EvalSpec(rule="low_confidence", tokens_per_step=k) for k in (1, 2, 4, 8)]
    specs += [E.EvalSpec(rule=f"threshold:{t}") for t in (0.95, 0.9, 0.8, 0.7, 0.5)]
    specs += [E.EvalSpec(rule="factor:1.0"), E.EvalSpec(rule="entropy", tokens_per_step=2)]
    specs += [E.EvalSpec(rule="threshold:0.9", cache=c) for c in ("prefix", "dual", "dual:refresh_every=2")]
    specs += [E.EvalSpec(rule="low_confidence", tokens_per_step=2, cache="dual")]
    tasks = [t for t in tasks if run_code or getattr(t, "name", t) != "code"]
    return E.sweep(params, tok, tasks, specs, limit=limit, batch_size=batch_size, allow_code_execution=run_code,
                   examples=examples)


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments; `out` defaults to a new runs/eval-<time> folder, so only `--out docs/eval` replaces docs/."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--out", default=None, help="output folder (default: a new runs/eval-<time>/)")
    p.add_argument("--limit", type=int, default=500, help="examples per task in the baseline")
    p.add_argument("--sweep-limit", type=int, default=300, help="examples per task in the sweep (0: skip)")
    p.add_argument("--batch-size", type=int, default=125)
    p.add_argument("--tasks", default=None, help="comma-separated baseline labels and sweep tasks to run "
                   "(default: all)")
    p.add_argument("--examples", action="append", default=[], metavar="TASK=FILE",
                   help="sweep TASK on the examples of a jsonl file (e.g. a harder difficulty) instead of its eval "
                        "split")
    p.add_argument("--difficulty", type=json.loads, default={}, metavar="JSON",
                   help='the sweep tasks\' generator settings, e.g. \'{"multistep": {"steps": [9, 10]}}\' (default: '
                   "each task's own)")
    p.add_argument("--confirm-run-unsafe-code", action="store_true",
                   help="also evaluate the code task, which runs model-written Python in jdlm's sandbox (see README)")
    args = p.parse_args(argv)
    if args.limit < 1 or args.batch_size < 1 or args.sweep_limit < 0:
        p.error("--limit and --batch-size must be positive, --sweep-limit positive or 0 (no sweep)")
    try:
        args.examples = {task: load_jsonl(path) for task, path in (item.split("=", 1) for item in args.examples)}
    except (ValueError, OSError) as e:
        p.error(f"--examples takes TASK=FILE with a readable jsonl file: {e}")
    for task, knobs in args.difficulty.items():
        if task not in SWEEP_TASKS or not isinstance(knobs, dict):
            p.error(f"--difficulty maps sweep tasks ({', '.join(SWEEP_TASKS)}) to settings, got {task!r}: {knobs!r}")
        try:
            dataclasses.replace(TASKS[task], **knobs)
        except (TypeError, ValueError) as e:
            p.error(f"--difficulty {task}: {e}")
    unknown = set(args.examples) - set(SWEEP_TASKS)
    if unknown:
        p.error(f"--examples: {', '.join(sorted(unknown))} is not a sweep task ({', '.join(SWEEP_TASKS)})")
    args.out = Path(args.out or time.strftime("runs/eval-%Y%m%d-%H%M%S"))
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file; give a folder")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    dtype = jnp.float32 if jax.default_backend() == "cpu" else None
    params, tok = jdlm.load(args.model, dtype=dtype)
    device = jax.devices()[0].device_kind
    only = None if args.tasks is None else set(args.tasks.split(","))
    base = baseline(params, tok, args.limit, args.batch_size, args.confirm_run_unsafe_code, only)
    E.write_tables(base, out, "baseline", f"Model `{args.model}` on {device}, one token per step, low confidence, "
                   "held-out eval split.")
    if args.sweep_limit:
        tasks = [dataclasses.replace(TASKS[t], **args.difficulty.get(t, {}))
                 for t in SWEEP_TASKS if selected(t, only)]
        reports = sweep(params, tok, args.sweep_limit, args.batch_size, tasks, run_code=args.confirm_run_unsafe_code,
                        examples=args.examples)
        E.write_tables(reports, out, "sweep", f"Model `{args.model}` on {device}: accuracy against NFE.")
        E.plot_pareto(reports, out / "pareto.png", title=f"{args.model}: accuracy vs NFE")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
