"""The accuracy cost of quantised weights (jdlm/quantize.py) on the shipped `tiny` model, and the logit drift on it
and at reduced LLaDA-8B-like random shapes: bfloat16 vs int8 vs fp8 weights, bfloat16 compute.

  accuracy: scripts/eval_tiny.py's baseline (one token per step, low confidence, held-out eval split) on a few tasks,
    and the share of answers identical to the bf16 model's;
  drift: max and mean |logit - reference logit| (and the reference's std, for scale) and top-1 agreement, against
    the float32 model's logits; the bfloat16 row is the yardstick (what bf16 alone costs). On `tiny`: at the masked
    positions of held-out prompts followed by 128 - P masks (a decode's first step); at the reduced shapes: every
    position of random tokens.
Writes quant.json and quant.md to --out (default $OUT, else a new runs/quant-<time>/).

    python scripts/eval_quant.py --limit 50                 # CPU, minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jdlm
from jdlm import eval as E
from jdlm.config import llada_8b
from jdlm.model import forward, init_params
from jdlm.quantize import quantize_params
from jdlm.tasks import TASKS

VARIANTS = {"sudoku": ("sudoku", {}), "countdown-3": ("countdown", {"n_sources": 3}), "arithmetic": ("arithmetic", {})}
MODES = ("bf16", "int8", "fp8")
# LLaDA-8B's layout at a fraction of its size: its head dim, MLP ratio and norms; 4 layers, width 1024.
REDUCED = dataclasses.replace(llada_8b(), d_model=1024, n_layers=4, n_heads=8, n_kv_heads=8, mlp_hidden=3072,
                              vocab_size=8192, mask_id=8000, eos_id=1, pad_id=1, eot_id=None)


def with_weights(params, mode: str):
    """bf16 params with their linear weights as `mode` says ("bf16": unchanged)."""
    return params if mode == "bf16" else quantize_params(params, mode)


def drift(params, reference: np.ndarray, tokens, where: np.ndarray) -> dict:
    """How far `params`' logits lie from `reference` [B, T, V] at the positions `where` [B, T]."""
    logits = np.asarray(forward(params, tokens).logits, np.float32)[where]
    reference = reference[where]
    diff = np.abs(logits - reference)
    return {"max_abs_diff": round(float(diff.max()), 5), "mean_abs_diff": round(float(diff.mean()), 5),
            "reference_std": round(float(reference.std()), 5),
            "top1_agreement": round(float((logits.argmax(-1) == reference.argmax(-1)).mean()), 4)}


def drift_table(float_params, tokens, where) -> dict:
    """{mode: drift against the float32 logits at `where`} for bf16 params of `float_params`' values in every
    mode."""
    reference = np.asarray(forward(float_params, tokens).logits, np.float32)
    bf16 = float_params.replace(weights=jax.tree.map(lambda a: a.astype(jnp.bfloat16), float_params.weights))
    return {mode: drift(with_weights(bf16, mode), reference, tokens, where) for mode in MODES}


def first_steps(tok, mask_id: int, per_task: int, length: int = 128) -> np.ndarray:
    """[n, length] token ids: held-out prompts of every task followed by masks, as a decode's first step sees them."""
    rows = []
    for name, difficulty in VARIANTS.values():
        task = TASKS[name]
        for example in task.generate("eval", per_task, seed=1, **difficulty):
            prompt = tok.encode(task.prompt(example.input))[:length // 2]
            rows.append(prompt + [mask_id] * (length - len(prompt)))
    return np.asarray(rows, np.int32)


def same_table(accuracy: dict) -> str:
    """Markdown: per task, the share of examples whose generated answer is identical to the bf16 model's."""
    rows = ["| task | " + " | ".join(MODES) + " |", "| --- |" + " ---: |" * len(MODES)]
    rows += [f"| {task} | " + " | ".join(f"{modes[m]['same_output_as_bf16']:.1%}" for m in MODES) + " |"
             for task, modes in accuracy.items()]
    return "Answers identical to the bf16 model's:\n\n" + "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=50, help="examples per task (default 50)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--tasks", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or f"runs/quant-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    device = jax.devices()[0].device_kind
    result: dict = {"device": device, "jax": jax.__version__, "limit": args.limit, "compute_dtype": "bfloat16",
                    "strategy": "low_confidence, one token per step", "accuracy": {}, "drift": {}}

    tiny32, tok = jdlm.load("tiny", jnp.float32)
    tokens = first_steps(tok, tiny32.config.mask_id, per_task=8)
    result["drift"]["tiny"] = drift_table(tiny32, jnp.asarray(tokens), tokens == tiny32.config.mask_id)
    reduced = init_params(REDUCED, jax.random.key(0), jnp.float32)
    tokens = np.random.default_rng(0).integers(0, REDUCED.mask_id, (2, 256))
    result["drift"]["reduced_llada_shapes"] = dict(config=dataclasses.asdict(REDUCED), **drift_table(
        reduced, jnp.asarray(tokens), np.ones(tokens.shape, bool)))
    print(json.dumps(result["drift"], indent=1), flush=True)

    tiny16, _ = jdlm.load("tiny", jnp.bfloat16)
    spec = E.EvalSpec(rule="low_confidence", tokens_per_step=1)
    reports, outputs = [], {}
    for mode in MODES:
        params = with_weights(tiny16, mode)
        for label in args.tasks.split(","):
            name, difficulty = VARIANTS[label]
            examples = TASKS[name].generate("eval", args.limit, seed=0, **difficulty)
            report = E.evaluate(params, tok, name, spec, examples=examples, batch_size=args.batch_size,
                                progress=False)
            reports.append(dataclasses.replace(report, task=label, strategy=f"{mode} weights"))
            outputs[label, mode] = [r.output for r in report.records]
            same = np.mean([a == b for a, b in zip(outputs[label, "bf16"], outputs[label, mode])])
            result["accuracy"].setdefault(label, {})[mode] = {"accuracy": report.accuracy, "n": report.n,
                                                              "mean_nfe": report.mean_nfe,
                                                              "same_output_as_bf16": round(float(same), 4)}
            print(E.format_table(reports[-1:]), flush=True)
    (out / "quant.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "quant.md").write_text(f"Model `tiny` on {device}, bfloat16 compute, low confidence, one token per step, "
                                  f"{args.limit} held-out examples per task.\n\n" + E.format_table(reports) + "\n\n"
                                  + same_table(result["accuracy"]) + "\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
