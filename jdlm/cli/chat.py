"""`jdlm chat`: several turns through the model's chat template."""

from __future__ import annotations

import sys

from jdlm.cli.args import (
    PACKAGED_MODELS,
    command,
    mesh_args,
    model_args,
    positive_int,
    strategy_args,
)
from jdlm.cli.common import (
    build_strategy,
    check_fits,
    check_steps,
    check_utf8,
    decoding_label,
    encode,
    load_guide,
    load_model,
    note,
    prompt_mesh,
    run_decode,
    stderr_console,
)
from jdlm.cli.examples import NEEDS_8B, chat_input, is_task_prompt, packaged_model_note
from jdlm.cli.models import check_causal_flags, check_model, is_causal
from jdlm.errors import UserError

CONTINUE = "\\"  # a line ending in it continues the message on the next line


def add_parser(sub) -> None:
    p = command(sub, "chat", "talk to a model, several turns, through its chat template",
                 "Interactive chat: each line you type is a user turn, sent when you press Enter; end a line with a\n"
                 "backslash (\\) to continue the message on the next line (task prompts span several lines). The\n"
                 "whole conversation goes through the model's chat template every turn. Commands: /reset (forget\n"
                 "the conversation), /exit (or Ctrl-D). Reads lines from stdin, so piped input works too. The oldest\n"
                 "turns are dropped when the conversation no longer fits the model's context. The packaged models\n"
                 "answer jdlm's task prompts only (see jdlm generate --help).",
                 "\n".join([
                     "jdlm chat",
                     f"{chat_input('countdown')} | jdlm chat      # a trailing \\ continues the message",
                     ("jdlm chat --model ~/jdlm/llada-8b --strategy threshold:0.9 --cache dual --gen-length 128   "
                      f"{NEEDS_8B}, converted first"),
                 ]))
    model_args(p)
    mesh_args(p, default="one device; model=M splits a model too large for one device over M of them")
    strategy_args(p)
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="forward passes per answer for counted rules (default --gen-length)")
    p.add_argument("--quiet", "-q", action="store_true", help="no timing lines on stderr")


def run(args) -> int:
    """`jdlm chat`: a read-decode-print loop over stdin that keeps the conversation."""
    interactive = sys.stdin.isatty()
    if is_causal(check_model(args.model)):
        check_causal_flags(args)
        strategy = None
    else:
        check_steps(args)
        strategy = build_strategy(args, steps=args.steps)
    console = stderr_console()
    params, tokenizer, loaded = load_model(args, prompt_mesh(args))
    guide = None if strategy is None else load_guide(args, params)
    if not args.quiet:
        note(console, loaded)
    if not tokenizer.chat_template:
        note(console, "note: this model has no chat template; each message is sent as plain text without the "
             "conversation", "yellow")
    if interactive:
        note(console, f"chatting with {args.model} ({decoding_label(args, strategy)}); end a line with {CONTINUE} to "
             "continue the message on the next line; /reset forgets the conversation, /exit or Ctrl-D quits")
    live = None
    if interactive and console.is_interactive and not args.quiet and strategy is not None:
        from jdlm.cli import viz

        def live(partials):  # the reply forming, one forward pass per frame
            return viz.show_live(partials, tokenizer, console, transient=True)
    history: list[dict[str, str]] = []  # finished exchanges only: a failed turn never enters it
    told = False
    while True:
        message = read_message(interactive)
        if message is None or message.strip() in ("/exit", "/quit"):
            return 0
        message = message.strip()
        if not message:
            continue
        if message == "/reset":
            history = []
            note(console, "(conversation cleared)")
            continue
        if message.startswith("/"):
            note(console, f"unknown command {message.split()[0]}; /reset or /exit", "yellow")
            continue
        if args.model in PACKAGED_MODELS and not told and not is_task_prompt(message):
            note(console, packaged_model_note(args.model), "yellow")
            told = True
        user = {"role": "user", "content": message}
        try:
            check_utf8(message, "the message")
            kept, ids = fit(tokenizer, history, user, args.gen_length, params.config.max_seq_len)
            timed = run_decode(params, tokenizer, ids, strategy, gen_length=args.gen_length, seed=args.seed,
                               bucket=True, console=None if args.quiet else console, live=live, guide=guide)
        except UserError as e:
            note(console, f"error: {' '.join(str(e).split())}", "red")
            continue
        if len(kept) < len(history):
            note(console, f"(dropped the oldest {(len(history) - len(kept)) // 2} exchange(s) to fit the model's "
                 "context)")
        reply = tokenizer.decode(timed.answer_ids)
        history = kept + [user, {"role": "assistant", "content": reply}]
        print(reply, flush=True)
        if not args.quiet:
            note(console, timed.summary())


def read_message(interactive: bool) -> str | None:
    """The next message: one line, joined with the lines after it while each ends in a backslash; None at the end
    of input (a message cut off by it is still sent)."""
    lines: list[str] = []
    while True:
        line = _read_line(interactive, "...> " if lines else "you> ")
        if line is None:
            return "\n".join(lines) if lines else None
        line = line.rstrip("\r\n")
        if not line.endswith(CONTINUE):
            return "\n".join(lines + [line])
        lines.append(line[: -len(CONTINUE)])


def _read_line(interactive: bool, prompt: str) -> str | None:
    """The next line from stdin (with a prompt on a terminal); None at end of input."""
    if interactive:
        try:
            return input(prompt)
        except EOFError:  # Ctrl-D: end the prompt's line, so that the shell's prompt starts on a fresh one
            print(file=sys.stderr if sys.stderr.isatty() else sys.stdout, flush=True)
            return None
    line = sys.stdin.readline()
    return line if line else None


def fit(tokenizer, history: list[dict[str, str]], user: dict[str, str], gen_length: int,
        max_seq_len: int) -> tuple[list[dict[str, str]], list[int]]:
    """`(kept, ids)`: the most recent exchanges of `history` that fit with `user` and the answer, and the prompt
    ids of `kept + [user]`. A message too long on its own is refused before any exchange is given up; `history`
    itself is never changed."""
    alone = encode(tokenizer, [user], chat=True)
    check_fits(len(alone), gen_length, max_seq_len)
    kept = list(history)
    while True:
        ids = encode(tokenizer, kept + [user], chat=True)
        if len(ids) + gen_length <= max_seq_len or not kept:
            return kept, ids
        kept = kept[2:]  # the oldest user turn and its answer
