"""Pictures of a decode's unmasking order: a terminal replay, a self-contained HTML page and a PNG chart.

Everything here works from a `RevealTrace`, plain Python lists taken from one row of a `DecodeResult`, so this
module imports neither JAX nor matplotlib at import time (the PNG writer imports matplotlib when called).
"""

from __future__ import annotations

import dataclasses
import html
import time
from pathlib import Path

from jdlm.errors import PlotUnavailable

MASK_GLYPH = "░"  # how a still-masked position looks in the terminal

# viridis at five stops: dark purple (first step) -> yellow (last step). Readable as a background on both light
# and dark terminals once the text colour is picked for contrast.
_RAMP = ((0x44, 0x01, 0x54), (0x3b, 0x52, 0x8b), (0x21, 0x91, 0x8c), (0x5e, 0xc9, 0x62), (0xfd, 0xe7, 0x25))


def ramp(t: float) -> tuple[int, int, int]:
    """The colour for a fraction `t` in [0, 1] of the way through the decode, as (r, g, b)."""
    t = min(max(t, 0.0), 1.0) * (len(_RAMP) - 1)
    i = min(int(t), len(_RAMP) - 2)
    f = t - i
    a, b = _RAMP[i], _RAMP[i + 1]
    return tuple(round(a[k] + f * (b[k] - a[k])) for k in range(3))


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def text_colour(rgb: tuple[int, int, int]) -> str:
    """Black or white, whichever reads better on the background `rgb`."""
    r, g, b = rgb
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RevealTrace:
    """One generated sequence and when each of its positions was revealed.

    Only positions up to and including the first end token are kept: everything after it is EOS fill (or, without
    EOS stopping, text that `Tokenizer.decode` drops anyway); `hidden` counts them.

    Attributes:
      pieces: the text of each token (special tokens by name, e.g. "<|eos|>").
      ids: token ids.
      step: forward-pass index (0-based, as in `DecodeResult.trace`) that revealed each position; -1 if it was never
        revealed. Everything a user sees (--show, the HTML page, the PNG, --json) counts passes from 1.
      confidence: the rule's confidence for the token when it was revealed.
      special: True where the token is an end/special token.
      n_steps: forward passes the decode ran (the length of the replay).
      hidden: generated positions after the end token, not shown.
    """

    pieces: list[str]
    ids: list[int]
    step: list[int]
    confidence: list[float]
    special: list[bool]
    n_steps: int
    hidden: int = 0

    @classmethod
    def from_result(cls, result, tokenizer, row: int = 0) -> "RevealTrace":
        """Takes row `row` of a `jdlm.DecodeResult`; `tokenizer` turns ids into text pieces."""
        import numpy as np

        ids = [int(i) for i in np.asarray(result.tokens[row])]
        step = [int(s) for s in np.asarray(result.trace.step[row])]
        conf = [float(c) for c in np.asarray(result.trace.confidence[row])]
        cfg = tokenizer.config
        ends = {cfg.eos_id} | ({cfg.eot_id} if cfg.eot_id is not None else set())
        keep = next((n + 1 for n, i in enumerate(ids) if i in ends), len(ids))
        ids, step, conf = ids[:keep], step[:keep], conf[:keep]
        # A byte-level token that is part of a multi-byte character decodes to nothing on its own: show its
        # vocabulary entry instead, so that every position stays visible.
        pieces = [tokenizer.decode([i], stop_at_eos=False, skip_special_tokens=False) or tokenizer.id_to_token(i)
                  or f"<{i}>" for i in ids]
        special = [i in ends or i in (cfg.mask_id, cfg.pad_id) for i in ids]
        return cls(pieces=pieces, ids=ids, step=step, confidence=conf, special=special,
                   n_steps=max(int(np.asarray(result.forwards)), max(step, default=-1) + 1),
                   hidden=len(result.tokens[row]) - keep)

    def fraction(self, step: int) -> float:
        """Where `step` lies between the first (0) and the last (1) forward pass."""
        return step / max(self.n_steps - 1, 1)


# ---------------------------------------------------------------- terminal


def frame(trace: RevealTrace, upto: int):
    """The generation as it stood after forward pass `upto` (a rich Text): revealed tokens on their step's colour,
    the ones revealed at `upto` underlined, masked positions as a dim block."""
    from rich.text import Text

    out = Text()
    for piece, step, special in zip(trace.pieces, trace.step, trace.special):
        if step < 0 or step > upto:
            out.append(MASK_GLYPH, style="dim")
            continue
        rgb = ramp(trace.fraction(step))
        style = f"{text_colour(rgb)} on {hex_colour(rgb)}"
        if special:
            style += " italic"
        if step == upto:
            style += " bold underline"
        out.append(piece, style=style)
    return out


def legend(trace: RevealTrace):
    """A one-line colour key: `step 1 ▇▇▇▇▇▇ step N`."""
    from rich.text import Text

    out = Text()
    out.append("step 1 ", style="dim")
    width = 24
    for k in range(width):
        out.append("█", style=hex_colour(ramp(k / (width - 1))))
    out.append(f" step {trace.n_steps}", style="dim")
    if trace.hidden:
        out.append(f"   ({trace.hidden} positions after the end token not shown)", style="dim")
    return out


def _view(trace: RevealTrace, upto: int, title: str):
    from rich.console import Group
    from rich.text import Text

    shown = sum(0 <= s <= upto for s in trace.step)
    header = Text(f"{title}step {min(upto + 1, trace.n_steps)}/{trace.n_steps}, {shown}/{len(trace.step)} "
                  "tokens revealed", style="bold")
    return Group(header, frame(trace, upto), legend(trace))


def show(trace: RevealTrace, console, *, title: str = "", seconds: float = 3.0) -> None:
    """Replays the unmasking on `console` (a rich Console), one frame per forward pass, in about `seconds`.

    The decode already ran; this only replays the recorded order. On a terminal that cannot animate (not a tty,
    TERM=dumb) it prints the final frame only.
    """
    last = trace.n_steps - 1
    if not console.is_interactive or trace.n_steps <= 1:
        console.print(_view(trace, last, title), soft_wrap=True)
        return
    from rich.live import Live

    delay = min(max(seconds / trace.n_steps, 0.02), 0.25)
    with Live(_view(trace, -1, title), console=console, refresh_per_second=30, transient=False) as live:
        for upto in range(trace.n_steps):
            time.sleep(delay)
            live.update(_view(trace, upto, title))


def show_live(results, tokenizer, console, *, title: str = "", transient: bool = False):
    """Shows the decode while it runs: one frame per partial `DecodeResult` from `jdlm.decoding.decode_steps`
    (colours scale with the forward passes run so far). Returns the last result; `transient` clears the view."""
    from rich.live import Live

    last = None
    with Live(console=console, refresh_per_second=30, transient=transient) as live:
        for last in results:
            trace = RevealTrace.from_result(last, tokenizer)
            live.update(_view(trace, trace.n_steps - 1, title))
    return last


# ---------------------------------------------------------------- files

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }
.meta { color: #666; font-size: 0.9em; }
.prompt { white-space: pre-wrap; background: #f4f4f4; padding: 0.6em; border-radius: 4px; font-family: monospace; }
.tokens { white-space: pre-wrap; font-family: monospace; font-size: 1.1em; line-height: 1.9; margin: 1em 0; }
.tok { border-radius: 3px; padding: 1px 0; }
.tok.special { font-style: italic; opacity: 0.8; }
.tok.masked { color: #999; }
.legend { display: flex; align-items: center; gap: 0.6em; font-size: 0.9em; color: #444; }
.bar { width: 20em; height: 1em; border-radius: 3px; }
table { border-collapse: collapse; margin-top: 1em; font-family: monospace; }
td { padding: 2px 8px; border-bottom: 1px solid #eee; vertical-align: top; white-space: pre-wrap; }
td.n { color: #666; text-align: right; }
"""


def _visible(piece: str) -> str:
    """Newlines, and the spaces of a whitespace-only token, made visible inside a coloured box."""
    if not piece.strip():
        piece = piece.replace(" ", "␣").replace("\t", "⇥")
    return piece.replace("\n", "⏎\n")


def _span(trace: RevealTrace, n: int) -> str:
    piece, step, conf, tid = trace.pieces[n], trace.step[n], trace.confidence[n], trace.ids[n]
    if step < 0:
        return f'<span class="tok masked" title="position {n}: never revealed" data-id="{tid}">{MASK_GLYPH}</span>'
    rgb = ramp(trace.fraction(step))
    cls = "tok special" if trace.special[n] else "tok"
    tip = f"position {n} · step {step + 1} of {trace.n_steps} · confidence {conf:.3f} · id {tid}"
    return (f'<span class="{cls}" style="background:{hex_colour(rgb)};color:{text_colour(rgb)}" '
            f'title="{html.escape(tip)}" data-id="{tid}" data-step="{step + 1}">{html.escape(_visible(piece))}</span>')


def write_html(trace: RevealTrace, path: str | Path, *, prompt: str = "", meta: str = "") -> Path:
    """Writes a self-contained HTML page (no external assets): the tokens on their reveal step's colour with a
    tooltip (step, confidence, id), a colour legend, and a table of the tokens each step revealed."""
    path = Path(path)
    stops = ", ".join(f"{hex_colour(ramp(k / 4))} {k * 25}%" for k in range(5))
    by_step: dict[int, list[int]] = {}
    for n, s in enumerate(trace.step):
        by_step.setdefault(s, []).append(n)
    rows = "\n".join(
        f'<tr><td class="n">{s + 1}</td><td>{"".join(_span(trace, n) for n in by_step[s])}</td></tr>'
        for s in sorted(k for k in by_step if k >= 0))
    hidden = f" ({trace.hidden} positions after the end token not shown)" if trace.hidden else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>jdlm decode trace</title><style>{_CSS}</style></head>
<body>
<h1>jdlm decode trace</h1>
<p class="meta">{html.escape(meta)}</p>
{f'<div class="prompt">{html.escape(prompt)}</div>' if prompt else ''}
<div class="tokens">{"".join(_span(trace, n) for n in range(len(trace.ids)))}</div>
<div class="legend"><span>step 1</span><div class="bar" style="background:linear-gradient(to right, {stops})"></div>
<span>step {trace.n_steps}</span><span>hover a token for its step and confidence{hidden}</span></div>
<h2>Tokens revealed at each step</h2>
<table><tr><td class="n">step</td><td>tokens</td></tr>
{rows}
</table>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path



def _label(piece: str) -> str:
    """A token as an axis label: visible whitespace, no mathtext."""
    text = piece.replace("\n", "\\n").replace("$", r"\$")
    return text if text.strip() else repr(text)[1:-1].replace(" ", "␣")


def require_matplotlib(what: str = "--trace FILE.png", instead: str = "write --trace FILE.html, which needs "
                       "nothing") -> None:
    """PlotUnavailable unless matplotlib imports; called before the work whose picture would need it."""
    try:
        import matplotlib.backends.backend_agg  # what trace_figure uses
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise PlotUnavailable(f'{what} needs matplotlib: pip install "jdlm[plot]" (or {instead})') from None


def write_png(trace: RevealTrace, path: str | Path, *, title: str = "") -> Path:
    """Writes `trace_figure` as a PNG. Needs matplotlib (`pip install "jdlm[plot]"`)."""
    import warnings

    path = Path(path)
    fig = trace_figure(trace, title=title)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs for exotic token bytes are not worth a warning
        fig.savefig(path, dpi=150)
    return path


def trace_figure(trace: RevealTrace, *, title: str = ""):
    """A matplotlib Figure: token position on x (labelled with the token), reveal step on y (first step at the
    top), each token a square on its step's colour; steps count from 1, with whole-number ticks only."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    G = len(trace.ids)
    xs = [n for n in range(G) if trace.step[n] >= 0]
    ys = [trace.step[n] + 1 for n in xs]
    cmap = LinearSegmentedColormap.from_list("jdlm", [tuple(c / 255 for c in rgb) for rgb in _RAMP])
    norm = Normalize(vmin=1, vmax=max(trace.n_steps, 2))
    fig = Figure(figsize=(min(max(6.0, 0.28 * G + 1.5), 40.0), min(max(3.5, 0.18 * trace.n_steps + 2), 14.0)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = ax.scatter(xs, ys, c=ys, cmap=cmap, norm=norm, marker="s", s=70, edgecolors="none")
    ax.set_xticks(range(G))
    ax.set_xticklabels([_label(p) for p in trace.pieces], rotation=90, fontsize=7, family="monospace")
    ax.set_xlim(-0.7, G - 0.3)
    ax.set_ylim(trace.n_steps + 0.7, 0.3)  # step 1 at the top: read down to follow the decode
    ax.set_xlabel("generated token (position →)")
    ax.set_ylabel("revealed at step")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a step is a whole forward pass
    ax.grid(True, alpha=0.25)
    ax.set_title(title or "jdlm: which token was revealed at which step", fontsize=10)
    fig.colorbar(points, ax=ax, label="step", pad=0.01, ticks=MaxNLocator(integer=True))
    fig.tight_layout()
    return fig
