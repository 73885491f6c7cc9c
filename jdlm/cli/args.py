"""Argument parsing shared by the commands: the parser class, value types and the common flag groups."""

from __future__ import annotations

import argparse
import difflib
import math
import re
import textwrap

from jdlm.decoding import names
from jdlm.errors import UsageError

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug in jdlm: rerun with --debug and report it
EXIT_USAGE = 2  # something the user can fix: a flag, a path, a prompt, a model, a missing optional package
EXIT_INTERRUPTED = 130  # Ctrl-C

ENVIRONMENT = """\
environment:
  JDLM_COMPILATION_CACHE   where compiled decodes are kept between runs (default ~/.cache/jdlm/jax, or
                           $XDG_CACHE_HOME/jdlm/jax); 0 turns the cache off
  JDLM_EXECUTABLE_CACHE    0 keeps JAX's persistent cache but not jdlm's stored decode programs (which a later
                           run loads without tracing the decode again)"""

EXIT_CODES = ENVIRONMENT + f"""

exit codes:
  {EXIT_OK}    success
  {EXIT_INTERNAL}    unexpected internal error (a bug): rerun with --debug for the traceback and report it
  {EXIT_USAGE}    a problem you can fix: bad flag or value, missing or unconverted model, bad prompt, missing file or
       optional package; one line "error: ..." on stderr says what to change
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)"""

PACKAGED_MODELS = ("tiny", "tiny-ar")
DEFAULT_MODEL = "tiny"
CACHES = tuple(names.CACHES)


def cache_choice(text: str) -> str:
    """--cache: a cache name, optionally with options (`freecache:window`, `freecache:policy=boundary,unit=16`)."""
    name = text.partition(":")[0].strip().lower()
    if name not in CACHES:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(map(repr, CACHES))})")
    return text.strip()
DTYPES = ("auto", "float32", "bfloat16", "float16")

STRATEGY_HELP = ("strategy spec: RULE[:VALUE] [CACHE] [COMMIT] [field=value ...] (default low_confidence), e.g.\n"
                 "threshold:0.9, 'threshold:0.9 dual', 'entropy top_p=0.9', 'low_confidence prophet'. Rules:\n"
                 + names.rule_help() + "\ncommit parts (optional):\n" + names.rule_help(table=names.COMMITS)
                 + "\nfields: the rule's, the cache's (refresh_every), the commit part's (late_gap, answer_start, "
                   "...) and the schedule's (see jdlm.Schedule)")


# ---------------------------------------------------------------- argument parsing


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line naming the fix, not a usage block."""

    def error(self, message):
        raise UsageError(f"{message}{_suggest_choice(message)} (see '{self.prog} --help')")

    def unknown_flags(self, extra: list[str]) -> UsageError:
        """The error for arguments this (sub)command does not know, with the closest flag it does know."""
        flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        hint = ""
        for word in extra:
            if word.startswith("--") and not hint:
                hint = did_you_mean(word.split("=")[0], flags)
        return UsageError(f"unrecognized arguments: {' '.join(extra)}{hint} (see '{self.prog} --help')")


def did_you_mean(word: str, choices) -> str:
    """` (did you mean 'x'?)` for the closest of `choices`, or ''."""
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _suggest_choice(message: str) -> str:
    """A 'did you mean' for argparse's "invalid choice: 'X' (choose from 'a', 'b')" messages (commands, --cache)."""
    found = re.search(r"invalid choice: '?(.*?)'? \(choose from (.*)\)", message)
    if not found:
        return ""
    return did_you_mean(found[1], [c.strip(" '") for c in found[2].split(",")])


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
    if not (value >= 0 and math.isfinite(value)):  # inf would turn every probability into NaN
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


MAX_SEED = 2**32 - 1


def check_seed(args) -> None:
    """--seed (parsed as an int by every command that has it) within what a PRNG key takes."""
    value = getattr(args, "seed", None)
    if value is not None and not 0 <= value <= MAX_SEED:
        raise UsageError(f"--seed {value}: expected a whole number from 0 to {MAX_SEED}")


def force_arg(p: Parser, files: str) -> None:
    p.add_argument("--force", action="store_true",
                   help=f"overwrite {files} if the file exists (a symbolic link is never followed)")


def command(sub, name: str, help: str, description: str, examples: str) -> Parser:
    p = sub.add_parser(name, help=help, description=description, formatter_class=Formatter,
                       epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  ")
                       + "\n\n" + EXIT_CODES)
    # Also accepted after the command; SUPPRESS keeps it from overwriting a --debug given before the command.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback on errors")
    return p


def model_args(p: Parser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, metavar="NAME|DIR",
                   help=f"packaged model ({', '.join(PACKAGED_MODELS)}) or a converted checkpoint directory "
                        f"(default {DEFAULT_MODEL}); a packaged name wins over a local folder of that name: "
                        f"write ./{DEFAULT_MODEL} for the folder")
    p.add_argument("--dtype", choices=DTYPES, default="auto", metavar="DTYPE",
                   help="compute dtype: float32, bfloat16 or float16; auto (default) is float32 on CPU and the "
                        "stored dtype elsewhere")
    p.add_argument("--quantize", choices=["int8", "fp8"], default=None,
                   help="weight-only quantisation of the linear weights at load: int8, or fp8 (e4m3; GPUs of compute "
                        "capability 8.9+). Half the weight bytes of bfloat16 for faster memory-bound decoding, at a "
                        "small accuracy cost (docs/quantization.md); a checkpoint converted with --quantize needs "
                        "no flag")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="keep each layer's q, k, v and gate, up projections as separate matmuls; by default on a "
                        "GPU (one device, with memory to spare for a second copy of them) they run as two wider "
                        "ones, about 5%% faster cached steps at 8B (jdlm.fuse_projections, docs/performance.md)")
    p.add_argument("--no-attention-kernel", dest="attention_kernel", action="store_false",
                   help="run a cached step's attention with cuDNN instead of jdlm's window attention kernel, which "
                        "is the default on one GPU (Ampere or newer) for models with as many kv heads as query "
                        "heads (LLaDA): 1-3%% faster batch-1 decodes at 8B "
                        "(jdlm.kernels.window_attention, docs/performance.md)")
    p.add_argument("--no-matmul-kernel", dest="matmul_kernel", action="store_false",
                   help="run a batch-1 cached step's matmuls with XLA instead of jdlm's matmul kernels, which are "
                        "the default on one Hopper GPU: 2-3%% faster batch-1 decodes at LLaDA-8B shapes in bf16, 5%% "
                        "with int8 weights (jdlm.kernels.float_linear and int8_swiglu, docs/performance.md)")


def guide_arg(p: Parser) -> None:
    p.add_argument("--guide", metavar="PATH_OR_NAME", default=None,
                   help="a causal model on the model's tokenizer (tiny-ar, or a converted checkpoint) that verifies "
                        "each step's drafts left to right and cuts the reveals at its first disagreement (FlashDLM "
                        "AR-guided diffusion); adds the spec word 'guide' when the strategy has none")


def joint_args(p: Parser) -> None:
    p.add_argument("--joint", type=positive_int, default=None, metavar="K",
                   help="approximate joint sampling (ADJUST): K tokens per full forward pass, a trained one-layer "
                        "sampler head updating the predictions between them (--steps defaults to --gen-length / K). "
                        "The packaged tiny ships its head; for another model train one (jdlm train-sampler)")
    p.add_argument("--joint-head", metavar="DIR", default=None,
                   help="the sampler head for --joint (default: the model's own, MODEL/sampler_head)")


def mesh_args(p: Parser, default: str = "every device, data parallel") -> None:
    p.add_argument("--mesh", metavar="data=N,model=M", default=None,
                   help="spread the work over the visible devices as a data x model mesh: data splits the batch, "
                        "model splits heads, MLP and vocabulary (tensor parallel); either may be left out "
                        f"(default: {default}). See docs/scaling.md")


def strategy_args(p: Parser, *, repeatable: bool = False, gen_length: int = 64) -> None:
    """Flags that build a Strategy (decoding.build_strategy reads them)."""
    if repeatable:
        p.add_argument("--strategy", "-s", action="append", metavar="SPEC",
                       help=STRATEGY_HELP + "\nrepeat to compare several")
    else:
        p.add_argument("--strategy", "-s", default="low_confidence", metavar="SPEC", help=STRATEGY_HELP)
    p.add_argument("--cache", "-c", type=cache_choice, default="none", metavar="CACHE",
                   help="KV cache (default none): " + "; ".join(f"{n.name} ({n.help})" for n in names.CACHES.values()))
    guide_arg(p)
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
