"""Prophet's early commit on the shipped `tiny` model: accuracy and mean NFE on held-out countdown examples, against
plain threshold decoding (CPU, float32). Each spec is read by `jdlm.strategies.parse_strategy` on top of the task's
lengths (gen 64, blocks of 16, steps 64).

    python scripts/eval_prophet.py --limit 100
    python scripts/eval_prophet.py --limit 100 -s "low_confidence prophet early_gap=15 mid_gap=10 late_gap=5" \
        -s "dawn" -s "axon selector=cover" -s "axon base=threshold:0.8"
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp

import jdlm
from jdlm import eval as E
from jdlm import strategies as S
from jdlm.eval.settings import TASK_SETTINGS

DEFAULT_SPECS = (
    "low_confidence", "low_confidence prophet", "threshold:0.9 dual", "threshold:0.9 dual prophet",
    *(f"threshold:{t}" for t in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)),
    *(f"threshold:{t} {c}" for t in (0.7, 0.8, 0.95) for c in ("prefix", "dual")),
)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=100, help="held-out countdown examples")
    p.add_argument("--strategy", "-s", action="append", help="spec to evaluate (repeat); default: the sweep above")
    p.add_argument("--batch-size", type=int, default=50)
    args = p.parse_args(argv)
    params, tok = jdlm.load("tiny", dtype=jnp.float32)
    settings = TASK_SETTINGS["countdown"]
    base = S.Strategy(schedule=S.Schedule(gen_length=settings.gen_length, block_length=settings.block_length,
                                          steps=settings.gen_length))
    print(f"{'strategy':<44} {'accuracy':>8} {'mean NFE':>9}", flush=True)
    for spec in args.strategy or DEFAULT_SPECS:
        report = E.evaluate(params, tok, "countdown", S.parse_strategy(spec, base), limit=args.limit,
                            batch_size=args.batch_size, progress=False)
        print(f"{spec:<44} {report.accuracy:>8.2f} {report.mean_nfe:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
