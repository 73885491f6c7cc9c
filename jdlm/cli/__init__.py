"""The `jdlm` command line: one module per command, each with `add_parser(sub)` and `run(args)`.

Only the standard library is imported until a command runs, so `jdlm --help` stays fast; each command imports
JAX and the rest of jdlm when it runs."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap

from jdlm.cli.args import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Formatter,
    Parser,
    check_seed,
)
from jdlm.cli.examples import NEEDS_8B, chat_input, shell_prompt
from jdlm.errors import UserError

COMMANDS = ("generate", "chat", "convert", "inspect", "eval", "bench", "train-sampler")
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_user_error(exc: BaseException) -> bool:
    """True for errors a user causes and can fix (bad flags, paths, models, prompts, strategies)."""
    return isinstance(exc, (UserError, *_USER_OS_ERRORS))


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def build_parser() -> Parser:
    parser = Parser(
        prog="jdlm", formatter_class=Formatter,
        description="jdlm: fast, exact decoding for masked-diffusion language models (LLaDA, Dream, tiny) in JAX.",
        epilog=textwrap.dedent(f"""\
            start here (the packaged model tiny knows jdlm's four tasks: a line 'TASK:', then the input):
              jdlm generate {shell_prompt('countdown')}        # on CPU, no download
              jdlm generate {shell_prompt('sudoku')} --strategy threshold:0.9 --cache dual --show
              {chat_input('countdown')} | jdlm chat      # a trailing \\ continues the message
              jdlm convert llada ~/hf/LLaDA-8B-Instruct ~/jdlm/llada-8b   {NEEDS_8B}, downloaded from Hugging Face
              jdlm generate --model ~/jdlm/llada-8b "Write a haiku about JAX."   {NEEDS_8B}, converted first

            'jdlm COMMAND --help' shows every flag of a command, with examples.

            """) + EXIT_CODES)
    parser.add_argument("--debug", action="store_true", default=False, help="show the full traceback on errors")
    parser.add_argument("--version", action="version", version=f"jdlm {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    for name in COMMANDS:
        importlib.import_module(f"jdlm.cli.{name.replace('-', '_')}").add_parser(sub)
    parser.commands = sub.choices  # name -> that command's Parser, for errors about its flags
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("jdlm")
    except Exception:  # not installed as a distribution (running from a source tree)
        return "0.1.0"



def main(argv: list[str] | None = None) -> int:
    """Runs `jdlm ARGS`; returns the exit code (see EXIT_CODES)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    for stream in (sys.stdout, sys.stderr):  # model text may hold characters the terminal's encoding lacks
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    if hasattr(sys.stdin, "reconfigure"):  # keep undecodable input bytes (as argv does) to name them in an error
        sys.stdin.reconfigure(errors="surrogateescape")
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        debug = args.debug
        if extra:  # named against the command's own flags, not the top level's
            raise parser.commands.get(args.command, parser).unknown_flags(extra)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        check_seed(args)
        return importlib.import_module(f"jdlm.cli.{args.command.replace('-', '_')}").run(args) or EXIT_OK
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Leave now: a decode still running on the device (a worker thread) would hold up a normal exit.
        os._exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); stop quietly without a second error while flushing stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # every failure ends here: one line, or the traceback with --debug
        if debug:
            import traceback

            traceback.print_exc()
        if is_user_error(e):
            message = e.strerror + f": {e.filename}" if isinstance(e, OSError) and e.filename else str(e)
            print(f"error: {one_line(message)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"error: internal error ({type(e).__name__}: {one_line(e)}); rerun with --debug for the traceback "
              "and please report it", file=sys.stderr)
        return EXIT_INTERNAL
