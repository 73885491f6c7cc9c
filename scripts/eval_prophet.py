"""Prophet's early commit, DAWN and AXON against the strongest baselines (low confidence at 1-4 tokens a step,
Fast-dLLM threshold at every threshold with no, prefix and dual cache) on held-out examples of one task: accuracy
and mean NFE, as a Markdown table, JSON and a Pareto plot. Each spec is read by `jdlm.strategies.parse_strategy`
on top of the task's lengths (one forward per token by default).

    python scripts/eval_prophet.py --limit 100 --out docs/eval/prophet_axon        # CPU, float32, ~10 min
    python scripts/eval_prophet.py --limit 100 -s "low_confidence prophet early_gap=15 mid_gap=10 late_gap=5" \\
        -s "dawn" -s "axon selector=cover" -s "axon base=threshold:0.8"
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax.numpy as jnp

import jdlm
from jdlm import eval as E
from jdlm import strategies as S
from jdlm.tasks import TASKS

BASELINES = (
    *(f"low_confidence steps={s}" for s in ("G", "G/2", "G/4")),
    *(f"threshold:{t}" for t in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)),
    *(f"threshold:{t} {c}" for t in (0.7, 0.8, 0.9, 0.95) for c in ("prefix", "dual")),
)
METHODS = (
    "low_confidence prophet", "threshold:0.9 prophet", "threshold:0.8 prophet", "threshold:0.9 dual prophet",
    "dawn", "axon", "axon selector=cover", "axon base=threshold:0.9", "axon base=threshold:0.8",
    "axon base=threshold:0.8 selector=cover",
)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--task", default="countdown", choices=sorted(TASKS))
    p.add_argument("--limit", type=int, default=100, help="held-out examples")
    p.add_argument("--strategy", "-s", action="append",
                   help="spec to evaluate (repeat); default: the baselines and methods above")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--out", default=None, help="folder for TASK.md, TASK.json and TASK.png")
    args = p.parse_args(argv)
    params, tok = jdlm.load(args.model, dtype=jnp.float32)
    task = TASKS[args.task]
    settings = E.task_settings(task, tok)
    G = settings.gen_length
    base = S.Strategy(schedule=S.Schedule(gen_length=G, block_length=settings.block_length, steps=G))
    reports = []
    print(f"{'strategy':<44} {'accuracy':>8} {'mean NFE':>9}", flush=True)
    for spec in args.strategy or BASELINES + METHODS:
        text = spec.replace("steps=G/2", f"steps={G // 2}").replace("steps=G/4", f"steps={G // 4}")
        text = text.replace("steps=G", f"steps={G}")
        report = E.evaluate(params, tok, task, S.parse_strategy(text, base), limit=args.limit,
                            batch_size=args.batch_size, progress=False)
        reports.append(dataclasses.replace(report, strategy=text))
        print(f"{text:<44} {report.accuracy:>8.2f} {report.mean_nfe:>9.1f}", flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        E.write_tables(reports, out, args.task,
                       f"Model `{args.model}`, task {args.task}, {args.limit} held-out examples, CPU float32.")
        E.plot_pareto(reports, out / f"{args.task}.png", title=f"{args.model} on {args.task}: accuracy vs NFE")
        print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
