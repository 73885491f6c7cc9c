"""`python -m jdlm.convert llada|dream|qwen2 SRC DST [--dtype bfloat16] [--overwrite]`: the same command as
`jdlm convert` (one parser, and the same errors: one `error:` line and exit 2 for anything the user can fix)."""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    from jdlm.cli import main as jdlm_main

    return jdlm_main(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
