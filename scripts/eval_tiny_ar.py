"""Greedy left-to-right accuracy of `tiny-ar` (the causal model for AR-guided decoding) on held-out task data.

    python scripts/eval_tiny_ar.py --limit 100
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jdlm
from jdlm.tasks import TASKS

GEN = {"sudoku": 24, "countdown": 64, "arithmetic": 80, "code": 32}


def greedy(params, ids: np.ndarray, mask: np.ndarray, steps: int) -> np.ndarray:
    """Appends `steps` argmax tokens to left-padded prompts [B, P].

    The buffer has its final length from the start, so one compiled forward serves every step: causal attention
    keeps the not-yet-written positions from influencing the one being predicted (full recompute per token; fine
    at this size).
    """

    @jax.jit
    def next_token(tokens, valid, i):
        positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
        logits = jdlm.forward(params, tokens, positions=positions, key_mask=valid, causal=True).logits
        return jnp.argmax(logits[:, P + i - 1], axis=-1).astype(jnp.int32)

    B, P = ids.shape
    tokens = np.concatenate([ids, np.full((B, steps), params.config.pad_id, np.int32)], axis=1)
    valid = np.concatenate([mask, np.ones((B, steps), bool)], axis=1)
    for i in range(steps):
        tokens[:, P + i] = np.asarray(next_token(jnp.asarray(tokens), jnp.asarray(valid), i))
    return tokens[:, P:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=100)
    args = p.parse_args()
    params, tok = jdlm.load("tiny-ar", dtype=jnp.float32)
    for name, task in TASKS.items():
        examples = task.generate("eval", args.limit, seed=0)
        prompts = [tok.encode_chat([{"role": "user", "content": task.prompt(e.input)}]) for e in examples]
        ids, mask = jdlm.pad_prompts(prompts, tok.pad_id, buckets=None)
        mask = np.ones_like(ids, bool) if mask is None else mask
        out = greedy(params, ids, mask, GEN[name])
        acc = np.mean([task.score(e.input, tok.decode(o)) for e, o in zip(examples, out)])
        print(f"{name:>10}: {acc:.3f} ({len(examples)} held-out examples, greedy)", flush=True)


if __name__ == "__main__":
    main()
