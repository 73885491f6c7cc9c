"""`jdlm convert`: a Hugging Face LLaDA or Dream checkpoint to a jdlm checkpoint."""

from __future__ import annotations

import time

from jdlm.cli.args import command
from jdlm.cli.common import note, stderr_console
from jdlm.cli.examples import NEEDS_8B


def add_parser(sub) -> None:
    p = command(sub, "convert", "convert a Hugging Face LLaDA or Dream checkpoint",
                 "Convert a Hugging Face LLaDA or Dream checkpoint (safetensors, no torch needed) into a jdlm\n"
                 "checkpoint directory: orbax weights, config.json, tokenizer files and manifest.json (with the\n"
                 "sha256 of every file, checked when the model loads). Every tensor name, shape and value is checked;\n"
                 "the output appears only when the conversion finished. DST must be a new folder (or, with\n"
                 "--overwrite, a jdlm checkpoint), apart from SRC; it is checked before anything is read.",
                 f"""
                 jdlm convert llada ~/hf/LLaDA-8B-Instruct ~/jdlm/llada-8b-instruct   {NEEDS_8B}, downloaded
                 jdlm convert dream ~/hf/Dream-v0-Instruct-7B ~/jdlm/dream-7b --dtype bfloat16   {NEEDS_8B}, downloaded
                 jdlm convert llada ~/hf/LLaDA-8B-Instruct ~/jdlm/llada-8b-int8 --quantize int8   {NEEDS_8B}, downloaded
                 """)
    p.add_argument("family", choices=["llada", "dream", "qwen2"],
                   help="model family of the source checkpoint (qwen2: a causal Qwen2.5, e.g. a guide for Dream)")
    p.add_argument("src", help="Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json)")
    p.add_argument("dst", help="jdlm checkpoint directory to create")
    p.add_argument("--dtype", default=None, help="cast weights: bfloat16, float32 or float16 (default: keep the "
                   "source dtype; float32 when the source mixes dtypes)")
    p.add_argument("--quantize", choices=["int8", "fp8"], default=None,
                   help="store the linear weights (q, k, v, o, gate, up, down) in int8 or fp8 e4m3 with one float32 "
                        "scale per output channel: half the bytes of bfloat16, faster memory-bound decoding "
                        "(docs/quantization.md); the checkpoint then loads quantised with no option")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it is a jdlm checkpoint")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar (it goes to stderr)")


def run(args) -> int:
    """`jdlm convert`: convert.convert_checkpoint with a progress bar."""
    from jdlm.convert.convert import convert_checkpoint

    t0 = time.perf_counter()
    dst = convert_checkpoint(args.family, args.src, args.dst, dtype=args.dtype, quantize=args.quantize,
                             overwrite=args.overwrite, progress=not args.quiet)
    console = stderr_console()
    note(console, f"wrote {dst} in {time.perf_counter() - t0:.1f} s; next: jdlm inspect {dst}", "green")
    note(console, f'try it: jdlm generate --model {dst} "Hello!"')
    return 0
