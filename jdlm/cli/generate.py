"""`jdlm generate`: decode one prompt and print the answer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jdlm.cli.args import command, model_args, positive_int, strategy_args
from jdlm.cli.common import build_strategy, describe, encode, load_model, note, run_decode, stderr_console
from jdlm.errors import UsageError

TRACE_KINDS = (".html", ".htm", ".png")


def add_parser(sub) -> None:
    p = command(sub, "generate", "decode one prompt and print the answer",
                 "Decode one prompt and print the answer on stdout (timing on stderr).\n\n"
                 "The whole decode is one compiled call. The first call of a shape compiles; the summary line shows\n"
                 "compile time and decode time separately. --show and --trace replay the order in which the decode\n"
                 "revealed the tokens (recorded during the compiled decode, replayed afterwards).",
                 """
                 jdlm generate "What is 17 * 23?"
                 echo "What is 17 * 23?" | jdlm generate -
                 jdlm generate "Sort 3 1 2" --strategy threshold:0.9 --cache dual --gen-length 64 --block-length 16
                 jdlm generate "What is 2 + 2?" --show --trace reveal.html
                 jdlm generate "What is 2 + 2?" --json | jq .nfe
                 """)
    p.add_argument("prompt", nargs="?", default=None,
                   help="the prompt; '-' (or nothing, with piped input) reads it from stdin")
    model_args(p)
    strategy_args(p)
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="forward passes budgeted for counted rules (default --gen-length: one token per step); "
                        "threshold and factor decide their own count")
    p.add_argument("--no-chat", action="store_true", help="use the prompt as plain text (no chat template)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout: text, token_ids, reveal_step, nfe, steps, compile_s, "
                        "run_s, tokens_per_s, ...")
    p.add_argument("--show", action="store_true",
                   help="replay the unmasking on stderr after the decode: masked positions dimmed, tokens "
                        "appearing in the order they were revealed, coloured by step (final frame only when "
                        "stderr is not a terminal)")
    p.add_argument("--trace", metavar="FILE.html|FILE.png",
                   help="write a picture of which token was revealed at which step: self-contained HTML with "
                        "tooltips, or a PNG chart (needs matplotlib: pip install \"jdlm[plot]\")")
    p.add_argument("--quiet", "-q", action="store_true", help="no timing summary or spinner on stderr")


def read_prompt(prompt: str | None) -> str:
    if prompt is None and sys.stdin.isatty():
        raise UsageError('give a prompt: jdlm generate "What is 17 * 23?" (or pipe one: echo ... | jdlm generate -)')
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    prompt = prompt.strip()
    if not prompt:
        raise UsageError('the prompt is empty; give some text, e.g. jdlm generate "What is 17 * 23?"')
    return prompt


def check_trace_path(path: str | None) -> str | None:
    """The trace format from --trace's suffix; checked before any work is done."""
    if path is None:
        return None
    suffix = Path(path).suffix.lower()
    if suffix not in TRACE_KINDS:
        raise UsageError(f"--trace {path}: unknown picture format {suffix or '(no suffix)'!r}; give a file ending "
                         "in .html or .png")
    parent = Path(path).expanduser().parent
    if not parent.is_dir():
        raise UsageError(f"--trace {path}: directory {parent} does not exist; create it or choose another path")
    return "png" if suffix == ".png" else "html"


def run(args) -> int:
    """`jdlm generate`: the answer on stdout, everything else on stderr."""
    trace_kind = check_trace_path(args.trace)
    prompt = read_prompt(args.prompt)
    console = stderr_console()
    strategy = build_strategy(args, steps=args.steps)
    params, tokenizer, loaded = load_model(args)
    prompt_ids = encode(tokenizer, [{"role": "user", "content": prompt}], chat=not args.no_chat)
    from jdlm.cli import viz

    live = None
    if args.show and console.is_interactive:  # watch the decode as it runs, one forward pass per frame
        def live(partials):
            return viz.show_live(partials, tokenizer, console, title=f"{args.strategy}: ")
    timed = run_decode(params, tokenizer, prompt_ids, strategy, seed=args.seed,
                       console=None if args.quiet else console, live=live)
    result = timed.result
    text = tokenizer.decode(timed.answer_ids)
    if not args.quiet:
        note(console, loaded)
        note(console, timed.summary())

    if args.show or trace_kind:
        trace = viz.RevealTrace.from_result(result, tokenizer)
        meta = f"{args.model} · {describe(strategy)} · NFE {int(result.nfe[0])}"
        if args.show and live is None:  # not a terminal: the final frame
            viz.show(trace, console, title=f"{args.strategy}: ")
        if trace_kind == "html":
            viz.write_html(trace, Path(args.trace).expanduser(), prompt=prompt, meta=meta)
        elif trace_kind == "png":
            viz.write_png(trace, Path(args.trace).expanduser(), title=meta)
        if trace_kind and not args.quiet:
            note(console, f"wrote {args.trace}")

    if args.json:
        steps = [int(s) for s in result.trace.step[0][: len(timed.answer_ids)]]
        print(json.dumps({
            "text": text, "token_ids": timed.answer_ids, "reveal_step": steps, "nfe": int(result.nfe[0]),
            "forwards": int(result.forwards), "compile_s": round(timed.compile_s, 4), "run_s": round(timed.run_s, 4),
            "tokens_per_s": round(timed.tokens_per_s, 2), "prompt_tokens": len(prompt_ids),
            "gen_length": strategy.schedule.gen_length, "model": args.model, "strategy": strategy.spec,
            "strategy_config": strategy.to_dict(),
        }))
    else:
        print(text)
    return 0
