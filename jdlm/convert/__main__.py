"""`python -m jdlm.convert llada|dream SRC DST [--dtype bfloat16] [--overwrite]`."""

from __future__ import annotations

import argparse
import sys

from jdlm.convert.convert import ConversionError, convert_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jdlm.convert",
        description="Convert a Hugging Face LLaDA or Dream checkpoint (safetensors) into a jdlm checkpoint.",
        epilog="example: python -m jdlm.convert llada ~/hf/LLaDA-8B-Instruct ~/jdlm/llada-8b-instruct")
    p.add_argument("family", choices=["llada", "dream"], help="model family of the source checkpoint")
    p.add_argument("src", help="Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("dst", help="jdlm checkpoint directory to create")
    p.add_argument("--dtype", default=None, help="cast weights: bfloat16, float32 or float16 (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dst = convert_checkpoint(args.family, args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite,
                                 progress=not args.quiet)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
