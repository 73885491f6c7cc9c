"""Distribution distance of k-tokens-per-forward sampling, with and without the joint sampler head (#19, #20).

On the pycode eval prompts, samples continuations (entropy order, temperature 1) with
  exact      one token per full forward (the model's joint distribution), seeds 0 and 1 (the second: noise floor)
  marginal   k tokens per full forward from one set of predictions
  joint      k tokens per full forward, the head updating the predictions between them (JointSampler)
and reports, against exact seed 0: the n-gram Jensen-Shannon divergence (token ids, n = 1..4) and MAUVE over the
model's mean hidden states (jdlm.eval.distribution), the mean NFE, and the pycode validity score; the real
continuations are measured the same way. With --tasks, also task accuracy (greedy, blocks of the head's 16): one
token per forward (entropy order), k per forward from the marginals, k per forward with the head, and Fast-dLLM
threshold 0.9 and 0.7 (no cache). Writes $OUT/joint_eval.json (OUT defaults to the current folder).

    python scripts/eval_joint.py --head runs/sampler/head --k 4        # GPU, after jdlm train-sampler
    python scripts/eval_joint.py --head runs/sampler/head --k 4 --tasks countdown,arithmetic --task-limit 200
    python scripts/eval_joint.py --quick                               # seconds on CPU: random weights
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
from jdlm import strategies as S
from jdlm.decoding import decode, pad_prompts
from jdlm.eval import distribution as D
from jdlm.eval.runner import encode_prompt
from jdlm.joint import JointSampler, init_head, load_head
from jdlm.tasks import TASKS

PROMPT_LENGTH = 128  # prompts are padded to this (longer ones are left out): with 64 new tokens, 192 positions


def continuation_ids(tokens: np.ndarray, end_ids) -> list[list[int]]:
    """Each row's generated ids up to (not including) its first end token."""
    out = []
    for row in tokens:
        ends = np.flatnonzero(np.isin(row, end_ids))
        out.append(row[:ends[0]].tolist() if len(ends) else row.tolist())
    return out


def features(params, prompts, mask, continuations, pad_id):
    """Mean final hidden states over each continuation (prompt attended to, padding masked)."""
    G = max(1, max(len(c) for c in continuations))
    rows = [list(p) + c + [pad_id] * (G - len(c)) for p, c in zip(prompts, continuations)]
    ids = np.asarray(rows, np.int32)
    P = prompts.shape[1]
    cont = np.zeros(ids.shape, bool)
    real = np.concatenate([mask, np.zeros((len(ids), G), bool)], axis=1)
    for i, c in enumerate(continuations):
        n = max(len(c), 1)  # an empty continuation: its first position stands in (an EOS right away)
        cont[i, P:P + n] = True
        real[i, P:P + n] = True
    return D.mean_hidden_features(params, ids, cont, real, batch_size=min(64, len(ids)))


def task_accuracy(params, tokenizer, task, head, k: int, block_length: int, limit: int) -> dict:
    """Greedy accuracy and mean NFE on `task`'s eval split: one token per forward, k per forward without and with
    the head, and Fast-dLLM threshold 0.9 / 0.7."""
    from jdlm import eval as jeval

    settings = jeval.task_settings(task, tokenizer, block_length=block_length)
    G = settings.gen_length
    one = S.Schedule(gen_length=G, block_length=block_length, steps=G, stop_at_eos=True)
    fewer = dataclasses.replace(one, steps=max(G // k, G // block_length))
    rows = {"one per forward": S.Strategy(schedule=one, rule=S.Entropy()),
            f"marginal_k{k}": S.Strategy(schedule=fewer, rule=S.Entropy()),
            f"joint_k{k}": S.Strategy(schedule=fewer, rule=S.Entropy(), proposer=JointSampler(head=head, k=k)),
            "threshold:0.9": S.parse_strategy("threshold:0.9", S.Strategy(schedule=one)),
            "threshold:0.7": S.parse_strategy("threshold:0.7", S.Strategy(schedule=one))}
    examples = task.generate("eval", limit, seed=0)
    out = {}
    for label, strategy in rows.items():
        r = jeval.evaluate(params, tokenizer, task, strategy, examples=examples, batch_size=len(examples),
                           progress=False, settings=settings)
        out[label] = {"accuracy": r.accuracy, "nfe": r.mean_nfe}
        print(f"{task.name:>10} {label:<16} acc {r.accuracy:.3f} NFE {r.mean_nfe:.1f}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--head", help="a trained head (jdlm train-sampler); without it, an untrained head")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--limit", type=int, default=256)
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--block-length", type=int, default=16)
    p.add_argument("--tasks", default="", help="comma-separated tasks whose accuracy to measure too")
    p.add_argument("--task-limit", type=int, default=200, help="examples per task (--tasks)")
    p.add_argument("--quick", action="store_true", help="random small model, 8 prompts: a smoke test on CPU")
    args = p.parse_args()
    out_dir = Path(os.environ.get("OUT", "."))
    out_dir.mkdir(parents=True, exist_ok=True)

    params, tokenizer = jdlm.load(args.model, jnp.float32)
    if args.quick:
        from jdlm.model import init_params
        from jdlm.training.presets import tiny_mdm_config

        config = dataclasses.replace(tiny_mdm_config(), d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=16,
                                     mlp_hidden=64)
        params = init_params(config, jax.random.key(0))
        args.limit, args.gen_length, args.block_length, args.k, args.task_limit = 8, 16, 8, 2, 4
    head = load_head(args.head, params) if args.head else init_head(params.config, jax.random.key(0))

    task = TASKS["pycode"]
    examples = task.generate("eval", args.limit, seed=0)
    encoded = [encode_prompt(tokenizer, task.prompt(e.input)) for e in examples]
    keep = [i for i, ids in enumerate(encoded) if len(ids) <= PROMPT_LENGTH]  # the tiny model's 256 positions
    examples, encoded = [examples[i] for i in keep], [encoded[i] for i in keep]
    prompts, mask = pad_prompts(encoded, tokenizer.pad_id, length=PROMPT_LENGTH)
    mask = np.ones(prompts.shape, bool) if mask is None else mask
    G, W, k = args.gen_length, args.block_length, args.k
    schedule = S.Schedule(gen_length=G, block_length=W, steps=G, temperature=1.0)
    fewer = dataclasses.replace(schedule, steps=G // k)
    runs = {"exact": (S.Strategy(schedule=schedule, rule=S.Entropy()), 0),
            "exact_seed1": (S.Strategy(schedule=schedule, rule=S.Entropy()), 1),
            f"marginal_k{k}": (S.Strategy(schedule=fewer, rule=S.Entropy()), 0),
            f"joint_k{k}": (S.Strategy(schedule=fewer, rule=S.Entropy(), proposer=JointSampler(head=head, k=k)), 0)}
    end_ids = np.asarray(params.config.end_ids)
    samples, report = {}, {"model": args.model, "head": args.head, "k": k, "prompts": len(examples),
                           "gen_length": G, "block_length": W, "device": str(jax.devices()[0])}
    for name, (strategy, seed) in runs.items():
        decode(params, prompts, strategy, key=jax.random.key(seed + 100), prompt_mask=mask).tokens.block_until_ready()
        t0 = time.perf_counter()
        out = decode(params, prompts, strategy, key=jax.random.key(seed), prompt_mask=mask)
        tokens = np.asarray(out.tokens)
        seconds = time.perf_counter() - t0
        samples[name] = continuation_ids(tokens, end_ids)
        texts = [tokenizer.decode(c) for c in samples[name]]
        report[name] = {"nfe": float(np.mean(np.asarray(out.nfe))), "seconds": round(seconds, 3),
                        "valid": float(np.mean([task.score(e.input, t) for e, t in zip(examples, texts)]))}
    samples["real"] = [tokenizer.encode(e.output) for e in examples]
    report["real"] = {}
    reference = features(params, prompts, mask, samples["exact"], tokenizer.pad_id)
    clusters = max(2, len(examples) // 10)
    for name in [n for n in samples if n != "exact"]:
        report[name]["ngram_js_vs_exact"] = D.ngram_js(samples[name], samples["exact"])
        feats = features(params, prompts, mask, samples[name], tokenizer.pad_id)
        report[name]["mauve_vs_exact"] = D.mauve(feats, reference, clusters=clusters)
    for name in filter(None, args.tasks.split(",")):
        report[f"task_{name}"] = task_accuracy(params, tokenizer, TASKS[name], head, k, args.block_length,
                                               args.task_limit)
    path = out_dir / "joint_eval.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
