"""Greedy left-to-right accuracy of `tiny-ar` (the causal model for AR-guided decoding) on held-out task data.

    python scripts/eval_tiny_ar.py --limit 100
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

import jdlm
from jdlm.tasks import TASKS

GEN = {"sudoku": 24, "countdown": 64, "arithmetic": 80, "code": 32}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=100)
    args = p.parse_args()
    params, tok = jdlm.load("tiny-ar", dtype=jnp.float32)
    for name, task in TASKS.items():
        examples = task.generate("eval", args.limit, seed=0)
        prompts = [tok.encode_chat([{"role": "user", "content": task.prompt(e.input)}]) for e in examples]
        ids, mask = jdlm.pad_prompts(prompts, tok.pad_id, buckets=None)
        out = jdlm.decode_causal(params, ids, GEN[name], prompt_mask=mask).tokens
        acc = np.mean([task.score(e.input, tok.decode(o)) for e, o in zip(examples, out)])
        print(f"{name:>10}: {acc:.3f} ({len(examples)} held-out examples, greedy)", flush=True)


if __name__ == "__main__":
    main()
