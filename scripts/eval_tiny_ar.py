"""Greedy left-to-right accuracy of `tiny-ar` (the causal model for AR-guided decoding) on held-out task data.

    python scripts/eval_tiny_ar.py --limit 100
    python scripts/eval_tiny_ar.py --model runs/ar2/model --tasks sudoku9,countdown
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

import jdlm
from jdlm.eval.settings import task_settings
from jdlm.tasks import TASKS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--model", default="tiny-ar")
    p.add_argument("--tasks", default=",".join(n for n in TASKS if n not in ("code", "pycode")),
                   help="comma-separated tasks (code runs model-written Python: only on a machine you trust)")
    args = p.parse_args()
    params, tok = jdlm.load(args.model, dtype=jnp.float32)
    for name in args.tasks.split(","):
        task = TASKS[name]
        examples = task.generate("eval", args.limit, seed=0)
        prompts = [tok.encode_chat([{"role": "user", "content": task.prompt(e.input)}]) for e in examples]
        ids, mask = jdlm.pad_prompts(prompts, tok.pad_id, buckets=None)
        out = jdlm.decode_causal(params, ids, task_settings(task, tok).gen_length, prompt_mask=mask).tokens
        acc = np.mean([task.score(e.input, tok.decode(o)) for e, o in zip(examples, out)])
        print(f"{name:>10}: {acc:.3f} ({len(examples)} held-out examples, greedy)", flush=True)


if __name__ == "__main__":
    main()
