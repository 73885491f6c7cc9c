"""`jdlm chat`: several turns through the model's chat template."""

from __future__ import annotations

import sys

from jdlm.cli.args import command, model_args, positive_int, strategy_args
from jdlm.cli.common import build_strategy, check_fits, describe, encode, load_model, note, run_decode, stderr_console
from jdlm.errors import UsageError


def add_parser(sub) -> None:
    p = command(sub, "chat", "talk to a model, several turns, through its chat template",
                 "Interactive chat: each line you type is a user turn; the whole conversation goes through the\n"
                 "model's chat template every turn. Commands: /reset (forget the conversation), /exit (or EOF).\n"
                 "Reads lines from stdin, so piped input works too. The oldest turns are dropped when the\n"
                 "conversation no longer fits the model's context.",
                 """
                 jdlm chat
                 jdlm chat --model ~/jdlm/llada-8b --strategy threshold:0.9 --cache dual --gen-length 128
                 printf 'What is 2 + 3?\\nAnd times 4?\\n/exit\\n' | jdlm chat
                 """)
    model_args(p)
    strategy_args(p)
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="forward passes per answer for counted rules (default --gen-length)")
    p.add_argument("--quiet", "-q", action="store_true", help="no timing lines on stderr")


def run(args) -> int:
    """`jdlm chat`: a read-decode-print loop over stdin that keeps the conversation."""
    from jdlm.decoding import InputError

    console = stderr_console()
    interactive = sys.stdin.isatty()
    strategy = build_strategy(args, steps=args.steps)
    params, tokenizer, loaded = load_model(args)
    if not args.quiet:
        note(console, loaded)
    if not tokenizer.chat_template:
        note(console, "note: this model has no chat template; each line is sent as plain text without the "
             "conversation", "yellow")
    if interactive:
        note(console, f"chatting with {args.model} ({describe(strategy)}); /reset forgets the "
             "conversation, /exit or Ctrl-D quits")
    live = None
    if interactive and console.is_interactive and not args.quiet:  # the reply forming, step by step
        from jdlm.cli import viz

        def live(partials):
            return viz.show_live(partials, tokenizer, console, transient=True)
    messages: list[dict[str, str]] = []
    while True:
        line = _read_line(interactive)
        if line is None or line.strip() in ("/exit", "/quit"):
            return 0
        line = line.strip()
        if not line:
            continue
        if line == "/reset":
            messages = []
            note(console, "(conversation cleared)")
            continue
        if line.startswith("/"):
            note(console, f"unknown command {line.split()[0]}; /reset or /exit", "yellow")
            continue
        messages.append({"role": "user", "content": line})
        try:
            ids = _fit(tokenizer, messages, strategy.schedule.gen_length, params.config.max_seq_len, console)
            timed = run_decode(params, tokenizer, ids, strategy, seed=args.seed, bucket=True,
                               console=None if args.quiet else console, live=live)
        except (UsageError, InputError) as e:
            note(console, f"error: {e}", "red")
            messages.pop()
            continue
        reply = tokenizer.decode(timed.answer_ids)
        messages.append({"role": "assistant", "content": reply})
        print(reply, flush=True)
        if not args.quiet:
            note(console, timed.summary())


def _read_line(interactive: bool) -> str | None:
    """The next line from stdin (with a prompt on a terminal); None at end of input."""
    if interactive:
        try:
            return input("you> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line if line else None


def _fit(tokenizer, messages: list[dict[str, str]], gen_length: int, max_seq_len: int, console) -> list[int]:
    """Prompt ids for the conversation, dropping the oldest exchanges until prompt + answer fit the model."""
    while True:
        ids = encode(tokenizer, messages, chat=True)
        if len(ids) + gen_length <= max_seq_len or len(messages) <= 1:
            check_fits(len(ids), gen_length, max_seq_len)
            return ids
        del messages[:2]  # the oldest user turn and its answer
        note(console, "(dropped the oldest turn to fit the model's context)")
