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


def front_labels(front: Sequence[EvalReport]) -> list[tuple[float, float, str]]:
    """(mean NFE, accuracy, text) per distinct point of a Pareto front; strategies at one point share a label.

    "threshold:0.9 (+3 more)" says that three more strategies reached the same accuracy with the same NFE.
    """
    groups: dict[tuple[float, float], list[str]] = {}
    for r in front:
        groups.setdefault((r.mean_nfe, r.accuracy), []).append(r.strategy)
    return [(x, y, names[0] + (f" (+{len(names) - 1} more)" if len(names) > 1 else ""))
            for (x, y), names in groups.items()]


# Label offsets tried in turn (points from the point to the label's near corner), nearest first: beside, then above
# and below, then further out with a leader line. Markers are ringed with a radius of 6 points.
_OFFSETS = [(8, 1), (8, -9), (-8, 1), (-8, -9), (0, 9), (0, -18), (14, 18), (14, -27), (-14, 18), (-14, -27),
            (8, 30), (8, -39), (-8, 30), (-8, -39), (24, 42), (24, -51), (-24, 42), (-24, -51)]


def _annotate(ax, x: float, y: float, text: str, offset: tuple[int, int]):
    """A 7-point label `offset` points from (x, y), with a leader line when it sits clear above or below."""
    dx, dy = offset
    return ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, fontsize=7, zorder=4,
                       ha="left" if dx > 0 else "right" if dx < 0 else "center", va="bottom",
                       arrowprops=None if abs(dy) < 12 else dict(arrowstyle="-", color="0.6", lw=0.5))


def _place_labels(ax, renderer, points: Sequence[tuple[float, float, str]], taken: list) -> None:
    """Annotates each point at the first offset whose text box overlaps no box in `taken` and stays in the axes.

    `taken` holds display-space boxes (markers, labels placed so far); the boxes placed here are added to it. A
    label that fits nowhere goes to the first offset that keeps it inside the axes, overlapping.
    """
    inside = ax.get_window_extent(renderer)
    for x, y, text in points:
        fallback = None
        for offset in _OFFSETS:
            label = _annotate(ax, x, y, text, offset)
            box = label.get_window_extent(renderer)
            if inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1:
                if not any(box.overlaps(t) for t in taken):
                    break
                fallback = fallback or offset
            label.remove()
        else:
            box = _annotate(ax, x, y, text, fallback or _OFFSETS[0]).get_window_extent(renderer)
        taken.append(box)


def _marker_box(ax, x: float, y: float, radius_pt: float = 6.0):
    """The display-space box of a ringed marker at data point (x, y), so that labels keep off it."""
    from matplotlib.transforms import Bbox

    cx, cy = ax.transData.transform((x, y))
    r = radius_pt * ax.figure.dpi / 72
    return Bbox([[cx - r, cy - r], [cx + r, cy + r]])


def _accuracy_limits(accuracies: Sequence[float]) -> tuple[float, float]:
    """y limits that show small differences (a task near 100% gets a narrow range), padded, past 0-100% only by
    the room a marker needs."""
    lo, hi = min(accuracies), max(accuracies)
    pad = max(0.015, 0.12 * (hi - lo))
    return max(lo - pad, -pad / 3), min(hi + pad, 1.0 + pad / 3)


def _percent(value: float, _) -> str:
    """Accuracy tick labels: 95%, 97.5%; none outside 0-100% (that room is only for the markers)."""
    return "" if not -0.0001 < value < 1.0001 else f"{100 * value:.4g}%"


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
    """Writes a PNG: accuracy (y) against mean NFE (x, log scale), one panel per task, one legend for all.

    In each panel each rule family (rule kind and cache, `EvalReport.family`) is one line (its own colour and
    marker) through its settings (tokens per step, or the threshold / factor value); the task's Pareto front (no
    other strategy has fewer NFE and higher accuracy) is a thick grey band whose points are ringed and named, each
    label placed where it overlaps no other. The accuracy axis of each panel spans that task's results.
    """
    if not reports:
        raise ValueError("no reports to plot")
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter
    by_task: dict[str, list[EvalReport]] = defaultdict(list)
    for r in reports:
        by_task[r.task].append(r)
    families = sorted({r.family for r in reports})
    colors = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    markers = {f: "osD^vP*Xhp"[i % 10] for i, f in enumerate(families)}

    n = len(by_task)
    cols = min(n, 2)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.4 * rows + 0.6), squeeze=False)
    for ax, (task, task_reports) in zip(axes.flat, by_task.items()):
        front = pareto_front(task_reports)
        ax.plot([r.mean_nfe for r in front], [r.accuracy for r in front], color="0.8", linewidth=8,
                solid_capstyle="round", zorder=1)
        ax.scatter([r.mean_nfe for r in front], [r.accuracy for r in front], s=130, facecolors="none",
                   edgecolors="black", linewidths=1.0, zorder=3)
        for family in families:
            line = sorted((r for r in task_reports if r.family == family), key=lambda r: r.mean_nfe)
            if line:
                ax.plot([r.mean_nfe for r in line], [r.accuracy for r in line], marker=markers[family],
                        markersize=5, color=colors[family], zorder=2)
        nfes = [r.mean_nfe for r in task_reports]
        if min(nfes) > 0 and max(nfes) > 2 * min(nfes):
            ax.set_xscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, not 2x10^1
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
        ax.margins(x=0.12)
        ax.set_ylim(*_accuracy_limits([r.accuracy for r in task_reports]))
        ax.yaxis.set_major_formatter(FuncFormatter(_percent))
        ax.set_title(f"{task} (n={task_reports[0].n})")
        ax.set_xlabel("mean NFE (forward passes per example)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [Line2D([], [], color="0.8", linewidth=8, label="Pareto front (named)")]
    handles += [Line2D([], [], color=colors[f], marker=markers[f], markersize=5, label=f) for f in families]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    legend_rows = -(-len(handles) // 4)
    fig.tight_layout(rect=(0, (0.1 + 0.2 * legend_rows) / fig.get_figheight(), 1, 1))
    renderer = fig.canvas.get_renderer()
    for ax, task_reports in zip(axes.flat, by_task.values()):  # labels last: they need the final layout
        marker_boxes = [_marker_box(ax, r.mean_nfe, r.accuracy) for r in task_reports]
        _place_labels(ax, renderer, front_labels(pareto_front(task_reports)), marker_boxes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
