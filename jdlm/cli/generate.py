"""`jdlm generate`: decode one prompt and print the answer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jdlm.cli.args import (
    PACKAGED_MODELS,
    command,
    force_arg,
    joint_args,
    mesh_args,
    model_args,
    positive_int,
    strategy_args,
)
from jdlm.cli.common import (
    attach_joint,
    build_strategy,
    check_steps,
    check_utf8,
    decoding_label,
    encode,
    joint_steps,
    load_guide,
    load_model,
    note,
    prefetch_for_prompt,
    prompt_mesh,
    run_decode,
    stderr_console,
)
from jdlm.cli.examples import (
    NEEDS_8B,
    TASK_INPUTS,
    generate_example,
    is_task_prompt,
    packaged_model_note,
    shell_prompt,
)
from jdlm.cli.models import check_causal_flags, check_model, is_causal
from jdlm.cli.outputs import check_output
from jdlm.errors import UsageError
from jdlm.files import write_atomically

TRACE_KINDS = (".html", ".htm", ".png")


def add_parser(sub) -> None:
    p = command(sub, "generate", "decode one prompt and print the answer",
                 "Decode one prompt and print the answer on stdout (timing on stderr).\n\n"
                 "The packaged models (tiny: masked diffusion, the default; tiny-ar: causal) were trained on jdlm's\n"
                 "four tasks only and answer prompts of one form: a line 'TASK:' (sudoku, countdown, arithmetic or\n"
                 "code), then the input, as in the examples below. A converted LLaDA or Dream model takes any text.\n\n"
                 "The whole decode is one compiled call. The first call of a shape compiles; the summary line shows\n"
                 "compile time and decode time separately. --show and --trace replay the order in which the decode\n"
                 "revealed the tokens (recorded during the compiled decode, replayed afterwards). A causal model\n"
                 "(--model tiny-ar) decodes greedily left to right; the strategy flags are for diffusion models.",
                 "\n".join([generate_example(task) for task in TASK_INPUTS] + [
                     f"printf 'code:\\n{TASK_INPUTS['code']}' | jdlm generate - --json --trace reveal.html",
                     f"jdlm generate {shell_prompt('sudoku')} --strategy threshold:0.9 --cache dual --show",
                     f"jdlm generate --model tiny-ar {shell_prompt('arithmetic')}   # the causal model",
                     (f'jdlm generate --model ~/jdlm/llada-8b --gen-length 256 "Write a haiku about JAX."   '
                      f"{NEEDS_8B}, converted first"),
                     (f'jdlm generate --model ~/jdlm/llada-8b --mesh model=2 "Write a haiku about JAX."   '
                      f"{NEEDS_8B} and 2 GPUs"),
                 ]))
    p.add_argument("prompt", nargs="?", default=None,
                   help="the prompt; '-' (or nothing, with piped input) reads it from stdin")
    model_args(p)
    mesh_args(p, default="one device; model=M splits a model too large for one device over M of them")
    strategy_args(p)
    joint_args(p)
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="forward passes budgeted for counted rules (default --gen-length: one token per step); "
                        "threshold and factor decide their own count")
    p.add_argument("--no-chat", action="store_true", help="use the prompt as plain text (no chat template)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout: text, token_ids, reveal_step (for each token, the forward "
                        "pass that revealed it, counted from 1 as in --show and --trace; null: never), nfe, forwards, "
                        "compile_s, run_s, tokens_per_s, mesh, devices, ...")
    p.add_argument("--show", action="store_true",
                   help="show the unmasking on stderr: on a terminal live, one frame per forward pass as the "
                        "decode runs (masked positions dimmed, tokens coloured by the step that revealed them); "
                        "otherwise the final frame after the decode")
    p.add_argument("--trace", metavar="FILE.html|FILE.png",
                   help="write a picture of which token was revealed at which step: self-contained HTML with "
                        "tooltips, or a PNG chart (needs matplotlib: pip install \"jdlm[plot]\")")
    force_arg(p, "the --trace file")
    p.add_argument("--quiet", "-q", action="store_true", help="no timing summary or spinner on stderr")


def read_prompt(prompt: str | None) -> str:
    if prompt is None and sys.stdin.isatty():
        raise UsageError(f"give a prompt: {generate_example('countdown')} (or pipe one in: ... | jdlm generate -)")
    if prompt is None or prompt == "-":
        prompt = sys.stdin.read()
    prompt = check_utf8(prompt).strip()
    if not prompt:
        raise UsageError(f"the prompt is empty; give some text, e.g. {generate_example('countdown')}")
    return prompt


def check_trace_path(path: str | None, force: bool) -> str | None:
    """The trace format from --trace's suffix; checked, with what writing it needs, before any work is done."""
    if path is None:
        return None
    if Path(path).suffix.lower() not in TRACE_KINDS:
        raise UsageError(f"--trace {path}: unknown picture format {Path(path).suffix or '(no suffix)'!r}; give a "
                         "file ending in .html or .png")
    check_output(path, "--trace", TRACE_KINDS, force=force)
    if Path(path).suffix.lower() != ".png":
        return "html"
    from jdlm.cli import viz

    viz.require_matplotlib()
    return "png"


def run(args) -> int:
    """`jdlm generate`: the answer on stdout, everything else on stderr."""
    trace_kind = check_trace_path(args.trace, args.force)
    prompt = read_prompt(args.prompt)
    causal = is_causal(check_model(args.model))  # before JAX is imported: a typo fails at once
    if causal:
        check_causal_flags(args)
        strategy = None
    else:
        check_steps(args)
        strategy = build_strategy(args, steps=joint_steps(args))
    console = stderr_console()
    mesh = prompt_mesh(args)
    live_view = args.show and console.is_interactive and strategy is not None
    tokenizer = None
    if strategy is not None and mesh is None and args.joint is None:  # (the joint head changes the strategy later)
        tokenizer = prefetch_for_prompt(args, strategy, [{"role": "user", "content": prompt}], steps=live_view)
    params, tokenizer, loaded = load_model(args, mesh, tokenizer=tokenizer)
    guide = None if causal else load_guide(args, params)
    strategy = None if causal else attach_joint(args, strategy, params)
    prompt_ids = encode(tokenizer, [{"role": "user", "content": prompt}], chat=not args.no_chat)
    from jdlm.cli import viz

    live = None
    if live_view:  # watch the decode, one frame per forward
        def live(partials):
            return viz.show_live(partials, tokenizer, console, title=f"{args.strategy}: ")
    timed = run_decode(params, tokenizer, prompt_ids, strategy, gen_length=args.gen_length, seed=args.seed,
                       console=None if args.quiet else console, live=live, guide=guide)
    result = timed.result
    text = tokenizer.decode(timed.answer_ids)
    if not args.quiet:
        note(console, loaded)
        note(console, timed.summary())
    if args.model in PACKAGED_MODELS and not is_task_prompt(prompt):  # after any error: that stays the only line
        note(console, packaged_model_note(args.model), "yellow")
    name = "greedy" if causal else strategy.spec
    if args.show or trace_kind:
        trace = viz.RevealTrace.from_result(result, tokenizer)
    if args.show and live is None:  # not a terminal (or a causal model): the replay, or its final frame
        viz.show(trace, console, title=f"{'greedy' if causal else args.strategy}: ")

    if args.json:
        steps = [s + 1 if s >= 0 else None for s in map(int, result.trace.step[0][: len(timed.answer_ids)])]
        print(json.dumps({
            "text": text, "token_ids": timed.answer_ids, "reveal_step": steps, "nfe": int(result.nfe[0]),
            "guide_nfe": None if getattr(result, "guide_nfe", None) is None else int(result.guide_nfe[0]),
            "forwards": int(result.forwards), "compile_s": round(timed.compile_s, 4), "run_s": round(timed.run_s, 4),
            "tokens_per_s": round(timed.tokens_per_s, 2), "prompt_tokens": len(prompt_ids),
            "gen_length": args.gen_length, "model": args.model, "strategy": name,
            "strategy_config": None if causal else strategy.to_dict(),
            "mesh": None if mesh is None else dict(mesh.shape), "devices": 1 if mesh is None else mesh.size,
        }), flush=True)
    else:
        print(text, flush=True)

    # The picture comes after the answer, so that a failure to write it never costs the answer.
    meta = f"{args.model} · {decoding_label(args, strategy)} · NFE {int(result.nfe[0])}"
    if trace_kind == "html":
        write_atomically(args.trace, lambda tmp: viz.write_html(trace, tmp, prompt=prompt, meta=meta))
    elif trace_kind == "png":
        write_atomically(args.trace, lambda tmp: viz.write_png(trace, tmp, title=meta))
    if trace_kind and not args.quiet:
        note(console, f"wrote {args.trace}")
    return 0
