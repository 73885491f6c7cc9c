"""Accuracy against NFE: one panel per task, one line per rule family, the Pareto front highlighted."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

from jdlm.eval.report import EvalReport


def pareto_front(reports: Sequence[EvalReport]) -> list[EvalReport]:
    """The reports no other report beats: none has mean NFE <= and accuracy >= with one of them strictly better.

    Returned by increasing mean NFE (so accuracy increases along it too).
    """
    front = [r for r in reports
             if not any(o.mean_nfe <= r.mean_nfe and o.accuracy >= r.accuracy
                        and (o.mean_nfe < r.mean_nfe or o.accuracy > r.accuracy) for o in reports)]
    return sorted(front, key=lambda r: (r.mean_nfe, r.accuracy))


def _point_label(r: EvalReport) -> str:
    """What varies along a family's line: tokens per step for counted rules, the rule's value otherwise."""
    _, _, value = r.rule.partition(":")
    return value if value and r.tokens_per_step == 1 else f"k={r.tokens_per_step}"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plot_pareto needs matplotlib: pip install 'jdlm[plot]' (or pip install matplotlib)") \
            from None
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(reports: Sequence[EvalReport], path: str | Path, *, title: str | None = None) -> Path:
    """Writes a PNG: accuracy (y) against mean NFE (x, log scale), one panel per task.

    In each panel, each rule family (rule kind and cache, `EvalReport.family`) is one line through its settings
    (tokens per step, or the threshold / factor value), labelled at each point; the task's Pareto front (no other
    strategy has fewer NFE and higher accuracy) is drawn as a thick grey band, its points ringed.
    """
    if not reports:
        raise ValueError("no reports to plot")
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter
    by_task: dict[str, list[EvalReport]] = defaultdict(list)
    for r in reports:
        by_task[r.task].append(r)
    families = sorted({r.family for r in reports})
    colors = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}

    n = len(by_task)
    cols = min(n, 2)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax, (task, task_reports) in zip(axes.flat, by_task.items()):
        front = pareto_front(task_reports)
        ax.plot([r.mean_nfe for r in front], [r.accuracy for r in front], color="0.75", linewidth=7,
                solid_capstyle="round", zorder=1, label="Pareto front")
        ax.scatter([r.mean_nfe for r in front], [r.accuracy for r in front], s=160, facecolors="none",
                   edgecolors="black", linewidths=1.2, zorder=3)
        for family in families:
            line = sorted((r for r in task_reports if r.family == family), key=lambda r: r.mean_nfe)
            if not line:
                continue
            ax.plot([r.mean_nfe for r in line], [r.accuracy for r in line], marker="o", color=colors[family],
                    label=family, zorder=2)
            for r in line:
                ax.annotate(_point_label(r), (r.mean_nfe, r.accuracy), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=colors[family])
        nfes = [r.mean_nfe for r in task_reports]
        if min(nfes) > 0 and max(nfes) > 2 * min(nfes):
            ax.set_xscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, not 2x10^1
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
        ax.margins(x=0.1)
        ax.set_title(f"{task} (n={task_reports[0].n})")
        ax.set_xlabel("mean NFE (forward passes per example)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
