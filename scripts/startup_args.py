"""The flags shared by scripts/bench_startup.py and scripts/bench_first_call.py.

A module beside the scripts (their folder is first on sys.path when they run), importing only argparse: both time
their child processes' imports, so the parser must not pull in JAX the way a helper inside jdlm would.
"""

from __future__ import annotations

import argparse


def add_shape_arguments(parser: argparse.ArgumentParser, timeout_s: float) -> None:
    """Random weights' shape and dtype, the decode's lengths and strategy, each child process's time limit; the
    defaults depend on --quick and are filled in by `fill_shape_defaults`."""
    parser.add_argument("--quick", action="store_true", help="tiny shapes (random 'test' weights, float32), for a CPU")
    parser.add_argument("--model", default=None, help="random shapes: llada-8b (default), dream-7b, test")
    parser.add_argument("--dtype", default=None, help="default bfloat16 (float32 with --quick)")
    parser.add_argument("--prompt-length", type=int, default=None, help="default 256 (16 with --quick)")
    parser.add_argument("--gen-length", type=int, default=None, help="default 256 (16 with --quick)")
    parser.add_argument("--block-length", type=int, default=None, help="default 32 (8 with --quick)")
    parser.add_argument("--strategy", default="low_confidence dual")
    parser.add_argument("--timeout", type=float, default=timeout_s,
                        help=f"seconds each process may take (default {timeout_s:g})")


def fill_shape_defaults(args: argparse.Namespace) -> None:
    """LLaDA-8B shapes in bfloat16, or with --quick the 'test' shapes in float32, wherever a flag was not given."""
    quick = args.quick
    args.model = args.model or ("test" if quick else "llada-8b")
    args.dtype = args.dtype or ("float32" if quick else "bfloat16")
    args.prompt_length = args.prompt_length or (16 if quick else 256)
    args.gen_length = args.gen_length or (16 if quick else 256)
    args.block_length = args.block_length or (8 if quick else 32)
