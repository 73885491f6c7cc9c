"""The `jdlm` command line: argument parsing, error reporting and exit codes. Commands live in cli_*.py.

Only the standard library is imported here, so `jdlm --help` stays fast; each command imports JAX and the rest of
jdlm when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug in jdlm: rerun with --debug and report it
EXIT_USAGE = 2  # something the user can fix: a flag, a path, a prompt, a model, a missing optional package
EXIT_INTERRUPTED = 130  # Ctrl-C

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}    success
  {EXIT_INTERNAL}    unexpected internal error (a bug): rerun with --debug for the traceback and report it
  {EXIT_USAGE}    a problem you can fix: bad flag or value, missing or unconverted model, bad prompt, missing file or
       optional package; one line "error: ..." on stderr says what to change
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)"""

PACKAGED_MODELS = ("tiny", "tiny-ar")
DEFAULT_MODEL = "tiny"
CACHES = ("none", "prefix", "dual")
DTYPES = ("auto", "float32", "bfloat16", "float16")

# Kept in step with jdlm.strategies.RULES (tests/test_cli.py checks); written out so --help needs no import.
STRATEGY_HELP = """\
reveal rule, NAME or NAME:VALUE (default low_confidence):
  low_confidence     the most probable proposals, a fixed count per step (LLaDA)
  random             random positions (LLaDA)
  threshold:T        every proposal with probability >= T, at least one (Fast-dLLM), e.g. threshold:0.9
  factor:F           Fast-dLLM's rank-dependent threshold, e.g. factor:1
  maskgit_plus[:A]   Dream's top-1 probability rule (A: alg_temp)
  margin[:A]         Dream's top-1 minus top-2 rule
  entropy[:A]        Dream's negative-entropy rule"""


class UsageError(Exception):
    """A mistake on the command line or in its inputs; printed as one `error:` line, exit code 2."""


# Exception classes (by module prefix and name) that mean "the user can fix this". Matched by name so that
# reporting an error never has to import JAX.
_USER_ERRORS = {
    "jdlm": {"CheckpointError", "ConfigError", "TokenizerError", "InputError", "StrategyError", "PlotUnavailable",
             "UsageError"},
    "convert": {"ConversionError", "CheckpointError"},
}
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_user_error(exc: BaseException) -> bool:
    """True for errors a user causes and can fix (bad flags, paths, models, prompts, strategies)."""
    if isinstance(exc, (UsageError, *_USER_OS_ERRORS)):
        return True
    package = type(exc).__module__.split(".")[0]
    return type(exc).__name__ in _USER_ERRORS.get(package, ())


def one_line(message: str) -> str:
    return " ".join(str(message).split())


# ---------------------------------------------------------------- argument parsing


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line naming the fix, not a usage block."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-wrapped descriptions and examples; wraps argument help as usual except where it has
    line breaks of its own (the strategy list)."""

    def _split_lines(self, text, width):
        if "\n" in text:
            return text.splitlines()
        return super()._split_lines(text, width)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _command(sub, name: str, help: str, description: str, examples: str) -> Parser:
    p = sub.add_parser(name, help=help, description=description, formatter_class=Formatter,
                       epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  ")
                       + "\n\n" + EXIT_CODES)
    # Also accepted after the command; SUPPRESS keeps it from overwriting a --debug given before the command.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback on errors")
    return p


def _model_args(p: Parser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, metavar="NAME|DIR",
                   help=f"packaged model ({', '.join(PACKAGED_MODELS)}) or a converted checkpoint directory "
                        f"(default {DEFAULT_MODEL})")
    p.add_argument("--dtype", choices=DTYPES, default="auto", metavar="DTYPE",
                   help="compute dtype: float32, bfloat16 or float16; auto (default) is float32 on CPU and the "
                        "stored dtype elsewhere")


def _strategy_args(p: Parser, *, repeatable: bool = False, gen_length: int = 64) -> None:
    """Flags that build a Strategy (decoding.build_strategy reads them)."""
    if repeatable:
        p.add_argument("--strategy", "-s", action="append", metavar="SPEC",
                       help=STRATEGY_HELP + "\nrepeat to compare several")
    else:
        p.add_argument("--strategy", "-s", default="low_confidence", metavar="SPEC", help=STRATEGY_HELP)
    p.add_argument("--cache", "-c", choices=CACHES, default="none",
                   help="KV cache: none (exact, full forward every step), prefix (reuse keys/values left of the "
                        "block), dual (reuse the whole sequence, recompute only the block); default none")
    p.add_argument("--gen-length", "-n", type=positive_int, default=gen_length, metavar="N",
                   help=f"tokens to generate (default {gen_length})")
    p.add_argument("--block-length", "-b", type=positive_int, default=None, metavar="N",
                   help="tokens per semi-autoregressive block, must divide --gen-length (default 32 when it "
                        "divides --gen-length, else one block)")
    p.add_argument("--temperature", "-t", type=non_negative_float, default=0.0, metavar="T",
                   help="0 (default) is greedy; > 0 samples")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling and random orders (default 0)")
    p.add_argument("--cfg", type=non_negative_float, default=0.0, metavar="SCALE",
                   help="classifier-free guidance scale (default 0: off); costs a second batch row per step")
    p.add_argument("--no-eos-stop", action="store_true",
                   help="keep decoding after the answer ends (default: stop a row at its end token)")


def build_parser() -> Parser:
    parser = Parser(
        prog="jdlm", formatter_class=Formatter,
        description="jdlm: fast, exact decoding for masked-diffusion language models (LLaDA, Dream, tiny) in JAX.",
        epilog=textwrap.dedent("""\
            start here:
              jdlm generate "What is 17 * 23?"                      # the packaged tiny model, on CPU
              jdlm generate "What is 17 * 23?" --strategy threshold:0.9 --cache dual --show
              jdlm chat
              jdlm convert llada ~/hf/LLaDA-8B-Instruct ~/jdlm/llada-8b
              jdlm generate --model ~/jdlm/llada-8b --gen-length 256 "Write a haiku about JAX."

            'jdlm COMMAND --help' shows every flag of a command, with examples.

            """) + EXIT_CODES)
    parser.add_argument("--debug", action="store_true", default=False, help="show the full traceback on errors")
    parser.add_argument("--version", action="version", version=f"jdlm {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    p = _command(sub, "generate", "decode one prompt and print the answer",
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
    _model_args(p)
    _strategy_args(p)
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

    p = _command(sub, "chat", "talk to a model, several turns, through its chat template",
                 "Interactive chat: each line you type is a user turn; the whole conversation goes through the\n"
                 "model's chat template every turn. Commands: /reset (forget the conversation), /exit (or EOF).\n"
                 "Reads lines from stdin, so piped input works too. The oldest turns are dropped when the\n"
                 "conversation no longer fits the model's context.",
                 """
                 jdlm chat
                 jdlm chat --model ~/jdlm/llada-8b --strategy threshold:0.9 --cache dual --gen-length 128
                 printf 'What is 2 + 3?\\nAnd times 4?\\n/exit\\n' | jdlm chat
                 """)
    _model_args(p)
    _strategy_args(p)
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="forward passes per answer for counted rules (default --gen-length)")
    p.add_argument("--quiet", "-q", action="store_true", help="no timing lines on stderr")

    p = _command(sub, "convert", "convert a Hugging Face LLaDA or Dream checkpoint",
                 "Convert a Hugging Face LLaDA or Dream checkpoint (safetensors, no torch needed) into a jdlm\n"
                 "checkpoint directory: orbax weights, config.json, tokenizer files and manifest.json. Every tensor\n"
                 "name and shape is checked; the output appears only when the conversion finished.",
                 """
                 jdlm convert llada ~/hf/LLaDA-8B-Instruct ~/jdlm/llada-8b-instruct
                 jdlm convert dream ~/hf/Dream-v0-Instruct-7B ~/jdlm/dream-7b --dtype bfloat16
                 """)
    p.add_argument("family", choices=["llada", "dream"], help="model family of the source checkpoint")
    p.add_argument("src", help="Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("dst", help="jdlm checkpoint directory to create")
    p.add_argument("--dtype", default=None, help="cast weights: bfloat16, float32 or float16 (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = _command(sub, "inspect", "describe a checkpoint: config, parameters, dtype, files",
                 "Describe a checkpoint directory (or a packaged model): its config, parameter count, dtype, files\n"
                 "with sizes and the manifest (source, creation date). Loads no weights. A Hugging Face directory\n"
                 "is recognised and the conversion command suggested.",
                 """
                 jdlm inspect tiny
                 jdlm inspect ~/jdlm/llada-8b-instruct --json
                 """)
    p.add_argument("path", metavar="NAME|DIR", help="checkpoint directory or packaged model name")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")

    p = _command(sub, "eval", "accuracy versus NFE of strategies on the task suite",
                 "Evaluate decoding strategies on jdlm's generated tasks (sudoku, countdown, arithmetic, code) or\n"
                 "on your own examples (--data), and report accuracy, forward passes (NFE) and tokens/s per task\n"
                 "and strategy. Each task decodes with its own measured generation and block length unless\n"
                 "--gen-length / --block-length override them. Decoding stops each row at its end token.",
                 """
                 jdlm eval --task arithmetic --limit 100
                 jdlm eval --task sudoku --strategy low_confidence --strategy threshold:0.9 --cache dual \\
                           --json results.json --plot pareto.png
                 jdlm eval --task countdown --strategy low_confidence --tokens-per-step 2
                 jdlm eval --task countdown --data my_examples.jsonl
                 """)
    _model_args(p)
    p.add_argument("--task", action="append", metavar="NAME",
                   help="task to evaluate (sudoku, countdown, arithmetic, code); repeat for several "
                        "(default: all four; exactly one with --data)")
    p.add_argument("--data", metavar="FILE.jsonl",
                   help="evaluate these examples ({\"input\": ..., \"output\": ...} per line) instead of the "
                        "task's own eval split")
    p.add_argument("--strategy", "-s", action="append", metavar="SPEC",
                   help=STRATEGY_HELP + "\nrepeat to compare several")
    p.add_argument("--cache", "-c", choices=CACHES, default="none", help="KV cache for every strategy (default none)")
    p.add_argument("--tokens-per-step", "-k", type=positive_int, default=1, metavar="K",
                   help="tokens revealed per step by counted rules (low_confidence, random, maskgit_plus, margin, "
                        "entropy); must divide the block length; threshold and factor decide their own (default 1)")
    p.add_argument("--temperature", "-t", type=non_negative_float, default=0.0, metavar="T",
                   help="0 (default) is greedy")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampled strategies (default 0)")
    p.add_argument("--gen-length", "-n", type=positive_int, default=None, metavar="N",
                   help="override every task's generation length (default: each task's measured length)")
    p.add_argument("--block-length", "-b", type=positive_int, default=None, metavar="N",
                   help="override every task's block length")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="examples per task (default 500, or all of --data)")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="B", help="prompts per decode (default 16)")
    p.add_argument("--json", dest="json_out", metavar="OUT.json", help="also write the reports (with every example) "
                   "as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="also plot accuracy against NFE (needs jdlm[plot])")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = _command(sub, "bench", "decode throughput: tokens/s and NFE per strategy and batch size",
                 "Benchmark decode throughput on random prompts: tokens/s (every generated position), NFE, and\n"
                 "compile time kept apart from run time (the median of --repeats runs after the compiling one).\n"
                 "Without --strategy it runs the reference set (LLaDA one token per step; Fast-dLLM threshold 0.9\n"
                 "with no, prefix and dual cache; 4 tokens per step with the dual cache). --random benchmarks\n"
                 "random weights at a published model's shapes, so no download is needed.",
                 """
                 jdlm bench
                 jdlm bench --random llada-8b --batch-size 1 --batch-size 8 --gen-length 256
                 jdlm bench --strategy low_confidence --strategy threshold:0.9 --cache dual --json bench.json
                 """)
    _model_args(p)
    p.add_argument("--random", metavar="SHAPE", choices=["llada-8b", "dream-7b", "test"],
                   help="random weights at these shapes instead of --model: llada-8b, dream-7b or test (2 layers)")
    _strategy_args(p, repeatable=True, gen_length=128)
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="forward passes for counted rules (default --gen-length)")
    p.add_argument("--prompt-length", type=positive_int, default=64, metavar="P",
                   help="prompt tokens (random ids, default 64)")
    p.add_argument("--batch-size", type=positive_int, action="append", metavar="B",
                   help="rows per decode; repeat for several (default 1)")
    p.add_argument("--repeats", type=positive_int, default=3, metavar="R",
                   help="timed runs after the compiling one (default 3)")
    p.add_argument("--json", dest="json_out", metavar="OUT.json", help="also write the results as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("jdlm")
    except Exception:  # not installed as a distribution (running from a source tree)
        return "0.1.0"


# ---------------------------------------------------------------- entry point

COMMANDS = {
    "generate": ("jdlm.cli_decode", "generate"),
    "chat": ("jdlm.cli_decode", "chat"),
    "convert": ("jdlm.cli_tools", "convert"),
    "inspect": ("jdlm.cli_tools", "inspect"),
    "eval": ("jdlm.cli_tools", "evaluate"),
    "bench": ("jdlm.cli_tools", "bench"),
}


def main(argv: list[str] | None = None) -> int:
    """Runs `jdlm ARGS`; returns the exit code (see EXIT_CODES)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    for stream in (sys.stdout, sys.stderr):  # model text may hold characters the terminal's encoding lacks
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        args = build_parser().parse_args(argv)
        debug = args.debug
        if args.command is None:
            build_parser().print_help(sys.stderr)
            return EXIT_USAGE
        import importlib

        module, function = COMMANDS[args.command]
        return getattr(importlib.import_module(module), function)(args) or EXIT_OK
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
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
