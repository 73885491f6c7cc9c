"""FlashDLM on the task suite: FreeCache, AR-guided diffusion and both, against one token per step (low_confidence)
and Fast-dLLM (threshold 0.9, with the dual cache and without), on the shipped `tiny` model guided by `tiny-ar`.

For each task and strategy: accuracy, mean NFE of the diffusion model, mean NFE of the guide (its prompt prefill
included), tokens/s (generated tokens up to each answer's end per second of decode wall time, compilation
excluded) and the speed-up over one token per step. Writes flashdlm.json and flashdlm.md under $OUT (or --out).

    OUT=results python scripts/eval_flashdlm.py --limit 32
    OUT=results python scripts/eval_flashdlm.py --limit 8 --task sudoku --task countdown
    OUT=results python scripts/eval_flashdlm.py --limit 128 --batch-size 32 --strategy ar-guided   # accuracy at more n
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp

import jdlm
import jdlm.eval as jeval
from jdlm import strategies as S
from jdlm.tasks import TASKS

BASELINE = "low_confidence k=1"


def strategies(gen_length: int, block_length: int) -> dict[str, S.Strategy]:
    """The compared strategies at one task's lengths (stop_at_eos on, as the evaluation always decodes)."""
    def spec(text: str, block: int = block_length) -> S.Strategy:
        base = S.Strategy(schedule=S.Schedule(gen_length=gen_length, block_length=block, steps=gen_length,
                                              stop_at_eos=True))
        return S.parse_strategy(text, base)

    G = gen_length
    return {
        BASELINE: spec("low_confidence"),
        "fast-dllm threshold:0.9 dual": spec("threshold:0.9 dual"),
        # No cache: the stronger baseline where the cache's stale keys cost accuracy (countdown, docs/eval/retrain5).
        "fast-dllm threshold:0.9": spec("threshold:0.9"),
        "freecache threshold:0.9": spec("threshold:0.9 freecache"),
        "freecache:window threshold:0.9": spec(f"threshold:0.9 freecache:window window={block_length}"),
        # The authors' decoder: every draft proposed, the guide keeps the agreeing prefix (one block, left to right).
        "ar-guided": spec("threshold:0.000001 guide", block=G),
        "ar-guided blocks": spec("threshold:0.000001 guide"),
        "ar-guided threshold:0.9": spec("threshold:0.9 guide"),
        "ar-guided + freecache:boundary": spec(f"threshold:0.000001 guide freecache:policy=boundary,unit="
                                              f"{block_length}", block=G),
        "ar-guided blocks + freecache": spec("threshold:0.000001 guide freecache"),
        # The guide's token written at each rejection (upstream's first speculative decoder).
        "ar-guided correct": spec("threshold:0.000001 guide correct=true", block=G),
        "ar-guided correct + freecache:boundary": spec(f"threshold:0.000001 guide correct=true "
                                                      f"freecache:policy=boundary,unit={block_length}", block=G),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=32, help="examples per task (default 32)")
    p.add_argument("--task", action="append", choices=sorted(TASKS),
                   help="tasks (default sudoku, countdown, arithmetic; code runs model-written code: --allow-code)")
    p.add_argument("--allow-code", action="store_true", help="also evaluate the code task (in jdlm's sandbox)")
    p.add_argument("--batch-size", type=int, default=1, help="rows per decode (default 1, the authors' setting)")
    p.add_argument("--strategy", action="append", metavar="LABEL",
                   help=f"only these rows of the table (repeat; {BASELINE!r} always runs, the speed-ups need it)")
    p.add_argument("--guide", default="tiny-ar", help="the causal guide: a shipped name or a checkpoint folder "
                   "(default tiny-ar)")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="output folder (default $OUT or .)")
    args = p.parse_args()
    known = strategies(32, 32)
    unknown = sorted(set(args.strategy or ()) - set(known))
    if unknown:
        p.error(f"--strategy {', '.join(unknown)}: not a row of this table; choose from {', '.join(known)}")
    wanted = {BASELINE, *(args.strategy or known)}
    tasks = args.task or ["sudoku", "countdown", "arithmetic"] + (["code"] if args.allow_code else [])
    dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    params, tok = jdlm.load("tiny", dtype=dtype)
    guide, _ = jdlm.load(args.guide, dtype=dtype)

    rows = []
    for name in tasks:
        task = TASKS[name]
        settings = jeval.task_settings(task, tok)
        examples = task.generate("eval", args.limit, seed=0)
        for label, strategy in strategies(settings.gen_length, settings.block_length).items():
            if label not in wanted:
                continue
            report = jeval.evaluate(params, tok, task, strategy, examples=examples, batch_size=args.batch_size,
                                    progress=False, settings=settings, allow_code_execution=args.allow_code,
                                    guide=guide if strategy.guide else None)
            rows.append({"task": name, "strategy": label, "spec": strategy.spec, "n": report.n,
                         "accuracy": report.accuracy, "nfe": report.mean_nfe, "guide_nfe": report.mean_guide_nfe,
                         "tokens_per_s": report.tokens_per_s, "compile_s": report.compile_s,
                         "device": report.device})
            print(f"{name:>10} {label:<32} acc {report.accuracy:.3f}  NFE {report.mean_nfe:6.1f}  guide NFE "
                  f"{report.mean_guide_nfe or 0:6.1f}  {report.tokens_per_s:8.1f} tok/s", flush=True)
    for row in rows:
        base = next(r for r in rows if r["task"] == row["task"] and r["strategy"] == BASELINE)
        row["speedup"] = row["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else None
        row["accuracy_change"] = row["accuracy"] - base["accuracy"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"limit": args.limit, "batch_size": args.batch_size, "device": jax.devices()[0].device_kind,
            "models": f"tiny guided by {args.guide}", "dtype": jnp.dtype(dtype).name}
    (out / "flashdlm.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / "flashdlm.md").write_text(markdown(rows, meta))
    plot(rows, meta, out / "flashdlm.png")
    print(markdown(rows, meta))


def plot(rows: list[dict], meta: dict, path: Path) -> None:
    """A PNG: accuracy (y) against the speed-up over one token per step (x, log), one panel per task, each strategy a
    labelled point; skipped without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cols = min(len(tasks), 2)
    fig, axes = plt.subplots(-(-len(tasks) // cols), cols, figsize=(6.4 * cols, 4.2 * -(-len(tasks) // cols)),
                             squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, tasks):
        for r in (r for r in rows if r["task"] == task and r["speedup"]):
            guided = r["strategy"].startswith("ar-guided")
            ax.scatter(r["speedup"], r["accuracy"], marker="o" if guided else "s",
                       color="tab:red" if guided else "tab:blue", zorder=2)
            ax.annotate(r["strategy"], (r["speedup"], r["accuracy"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_ylabel("accuracy")
        ax.set_title(task)
        ax.set_xlabel("tokens/s over one token per step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"FlashDLM: {meta['models']}, {meta['limit']} examples a task, batch {meta['batch_size']}, "
                 f"{meta['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [(f"FlashDLM on the task suite ({meta['models']}, {meta['limit']} examples per task, batch "
             f"{meta['batch_size']}, {meta['dtype']} on {meta['device']}). Speed-up: tokens/s over {BASELINE}."),
             "", "| task | strategy | accuracy | Δ acc | NFE | guide NFE | tokens/s | speed-up |",
             "|:--|:--|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        guide = "" if r["guide_nfe"] is None else f"{r['guide_nfe']:.1f}"
        speed = "" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['task']} | {r['strategy']} | {r['accuracy']:.3f} | {r['accuracy_change']:+.3f} | "
                     f"{r['nfe']:.1f} | {guide} | {r['tokens_per_s']:.1f} | {speed} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
