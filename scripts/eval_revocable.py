"""WINO and ASRD against Fast-dLLM threshold decoding on the shipped `tiny` model (CPU, float32): accuracy and mean
NFE per task, and sweeps of ASRD's knobs (anchor window, injection scale, perturbation scale, anchor distance) one at
a time around its defaults. Writes revocable.json (every report, with the strategy that ran), revocable.md (the
tables) and revocable.png (accuracy against NFE, when matplotlib is installed) under --out (default $OUT, else
results/revocable).

    python scripts/eval_revocable.py --limit 50
    python scripts/eval_revocable.py --limit 20 --tasks countdown --quick      # a few strategies, for a smoke test
    python scripts/eval_revocable.py --limit 50 -s "asrd:0.7 injection=0.3" -s "wino:0.7"
    python scripts/eval_revocable.py --limit 16 --tasks countdown --quick --diagnose   # how often they re-mask
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import jax.numpy as jnp

import jdlm
from jdlm import eval as E
from jdlm import strategies as S
from jdlm.eval.settings import TASK_SETTINGS

ASRD_BASE = "asrd:0.7"
# (group, spec): the baselines, then one knob of ASRD at a time (the others at their defaults: anchor_window 3,
# injection 0.1, perturbation 0.1, anchor_distance 8). Kept small: the tiny model decodes ~1 s a step on a shared CPU.
SWEEP = (
    *(("threshold", f"threshold:{t}") for t in (0.7, 0.9)),
    ("threshold dual", "threshold:0.9 dual"),
    *(("wino", f"wino:{t}") for t in (0.5, 0.7, 0.9)),
    *(("asrd", f"asrd:{t}") for t in (0.5, 0.7, 0.9)),
    *(("asrd anchor_window", f"{ASRD_BASE} anchor_window={k}") for k in (1, 6)),
    *(("asrd injection", f"{ASRD_BASE} injection={a}") for a in (0, 0.5)),
    *(("asrd perturbation", f"{ASRD_BASE} perturbation={e}") for e in (0, 0.5)),
)
QUICK = (("threshold", "threshold:0.9"), ("wino", "wino:0.7"), ("asrd", ASRD_BASE),
         ("asrd injection", f"{ASRD_BASE} injection=0"), ("asrd perturbation", f"{ASRD_BASE} perturbation=0"))


def run(tasks, plan, limit, batch_size, params, tok):
    """Every (group, spec) on every task: a list of (group, EvalReport)."""
    out = []
    for task in tasks:
        settings = TASK_SETTINGS[task]
        base = S.Strategy(schedule=S.Schedule(gen_length=settings.gen_length, block_length=settings.block_length,
                                              steps=settings.gen_length))
        for group, spec in plan:
            start = time.perf_counter()
            report = E.evaluate(params, tok, task, S.parse_strategy(spec, base), limit=limit, batch_size=batch_size,
                                progress=False)
            report = dataclasses.replace(report, strategy=spec)
            print(f"{task:<11} {spec:<44} acc {report.accuracy:6.3f}  NFE {report.mean_nfe:6.1f}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            out.append((group, report))
    return out


def revocation_stats(params, tok, task_name, specs, limit):
    """How often the revocable rules act on real prompts: per spec, re-masks per example, the share of steps that
    re-mask, and (ASRD) anchors per example at the end. Steps the loop by hand, greedy, one batch."""
    import jax
    import numpy as np

    from jdlm.decoding import loop
    from jdlm.eval.runner import encode_prompt
    from jdlm.tasks import get_task

    task, settings = get_task(task_name), TASK_SETTINGS[task_name]
    prompts = [encode_prompt(tok, task.prompt(ex.input)) for ex in task.generate("eval", limit, seed=0)]
    ids, mask = jdlm.pad_prompts(prompts, params.config.pad_id, length=settings.prompt_length)
    base = S.Strategy(schedule=S.Schedule(gen_length=settings.gen_length, block_length=settings.block_length,
                                          steps=settings.gen_length, stop_at_eos=True))
    step = jax.jit(loop.step)
    rows = []
    for spec in specs:
        strategy = S.parse_strategy(spec, base)
        args = loop._arguments(params, ids, strategy, None, mask)
        inputs, state = loop.init_state(*args)
        strategy = args[4]
        steps = remasking_steps = 0
        while bool(loop.running(state, strategy)):
            new = step(inputs, state, strategy)
            gained = np.asarray(new.memory.revoked).sum() - np.asarray(state.memory.revoked).sum()
            steps, remasking_steps = steps + 1, remasking_steps + int(gained > 0)
            state = new
        anchors = np.asarray(state.memory.extra.anchor).sum(-1).mean() if state.memory.extra is not None else None
        remasks = float(np.asarray(state.memory.revoked).sum(-1).mean())
        row = {"task": task_name, "strategy": spec, "remasks_per_example": remasks,
               "steps_with_remask": remasking_steps / steps, "mean_nfe": float(np.asarray(state.nfe).mean()),
               "anchors_per_example": None if anchors is None else float(anchors)}
        print(row, flush=True)
        rows.append(row)
    return rows


def markdown(results, limit) -> str:
    """One table per task: group, strategy, accuracy, mean NFE, tokens/s; the best accuracy per task in bold."""
    lines = [f"# Revocable decoding on the tiny model ({limit} held-out examples per task, greedy, CPU float32)", ""]
    for task in dict.fromkeys(r.task for _, r in results):
        rows = [(g, r) for g, r in results if r.task == task]
        best = max(r.accuracy for _, r in rows)
        lines += [f"## {task}", "", "| group | strategy | accuracy | mean NFE | tokens/s (CPU) |",
                  "| --- | --- | ---: | ---: | ---: |"]
        for g, r in rows:
            acc = f"**{r.accuracy:.3f}**" if r.accuracy == best else f"{r.accuracy:.3f}"
            lines.append(f"| {g} | `{r.strategy}` | {acc} | {r.mean_nfe:.1f} | {r.tokens_per_s:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=50, help="held-out examples per task")
    p.add_argument("--tasks", nargs="+", default=["countdown", "sudoku"], choices=sorted(TASK_SETTINGS))
    p.add_argument("--strategy", "-s", action="append", help="spec to evaluate (repeat); default: the sweep")
    p.add_argument("--quick", action="store_true", help="five strategies instead of the whole sweep")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--out", default=os.environ.get("OUT", "results/revocable"))
    p.add_argument("--diagnose", action="store_true",
                   help="instead of accuracy: how often each spec re-masks, and ASRD's anchors (revocation.json)")
    args = p.parse_args(argv)
    plan = [("given", s) for s in args.strategy] if args.strategy else (QUICK if args.quick else SWEEP)
    params, tok = jdlm.load("tiny", dtype=jnp.float32)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.diagnose:
        specs = [spec for _, spec in plan if not spec.startswith("threshold")]
        rows = [row for task in args.tasks for row in revocation_stats(params, tok, task, specs, args.limit)]
        (out / "revocation.json").write_text(json.dumps(rows, indent=1))
        return
    results = run(args.tasks, plan, args.limit, args.batch_size, params, tok)

    records = [{"group": g, **{k: v for k, v in dataclasses.asdict(r).items() if k != "records"}} for g, r in results]
    (out / "revocable.json").write_text(json.dumps(records, indent=1))
    (out / "revocable.md").write_text(markdown(results, args.limit))
    try:
        from jdlm.eval.plot import plot_pareto
        plot_pareto([r for _, r in results], out / "revocable.png", title="tiny model: revocable decoding")
    except ImportError:
        print("matplotlib is not installed: no plot")
    print(f"wrote {out}/revocable.json, revocable.md")


if __name__ == "__main__":
    main()
