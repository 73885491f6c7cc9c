"""Before/after measurements of a decode-core change, on one machine: run it once per tree.

    git archive 48e3eca jdlm scripts | tar -x -C /tmp/old      # the tree to compare against
    python scripts/bench_decode_core.py /tmp/old before OUT sweep prefix8b batch8
    python scripts/bench_decode_core.py .        after  OUT sweep prefix8b batch8

Only API that both trees have is used (jdlm.load, init_params, decode, strategies.fast_dllm, the sweep of
scripts/eval_tiny.py). Parts:
  sweep     the committed accuracy-vs-NFE sweep of `tiny` (300 examples a task): compile and decode seconds.
  prefix8b  random bf16 LLaDA-8B weights, B=1, prompt 256, 256 tokens in blocks of 32: tokens/s of threshold 0.9
            and 4 tokens a step, each with the prefix and the dual cache.
  batch8    the same at B=8 for threshold 0.9 with both caches (and, in a tree that has it, PrefixCache(windows=...)).
Writes OUT/LABEL.json.
"""

import importlib.util
import inspect
import json
import statistics
import sys
import time


def timed(decode, params, prompt, strategy, repeats):
    """(compile seconds, median run seconds, last result): the first call compiles, the rest are timed."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(decode(params, prompt, strategy).tokens)
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = decode(params, prompt, strategy)
        jax.block_until_ready(result.tokens)
        runs.append(time.perf_counter() - t0)
    run = statistics.median(runs)
    return first - run, run, result


def main(root: str, label: str, out: str, parts: list[str]) -> None:
    sys.path.insert(0, root)
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jdlm
    from jdlm import strategies as S

    report = {"label": label, "device": jax.devices()[0].device_kind}
    G, W = 256, 32
    if "sweep" in parts:
        spec = importlib.util.spec_from_file_location("eval_tiny", f"{root}/scripts/eval_tiny.py")
        eval_tiny = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(eval_tiny)
        params, tok = jdlm.load("tiny")
        t0 = time.perf_counter()
        tasks = ("sudoku", "countdown", "arithmetic")  # the committed sweep's tasks
        if "tasks" in inspect.signature(eval_tiny.sweep).parameters:
            reports = eval_tiny.sweep(params, tok, 300, 125, tasks=tasks)
        else:
            reports = eval_tiny.sweep(params, tok, 300, 125)
        report["sweep"] = {"reports": len(reports), "compile_s": sum(r.compile_s for r in reports),
                           "decode_s": sum(r.decode_s for r in reports), "wall_s": time.perf_counter() - t0,
                           "rows": [[r.task, r.strategy, r.accuracy, r.mean_nfe, r.compile_s] for r in reports]}
        print(label, "sweep", {k: v for k, v in report["sweep"].items() if k != "rows"}, flush=True)
    if "prefix8b" in parts or "batch8" in parts:
        params = jdlm.init_params(jdlm.llada_8b(), jax.random.key(0), jnp.bfloat16)
    if "prefix8b" in parts:
        prompt = np.random.default_rng(0).integers(0, 120000, size=(1, 256)).astype(np.int32)
        rows = {}
        for name, kwargs in [("threshold:0.9 prefix", dict(threshold=0.9, cache="prefix")),
                             ("threshold:0.9 dual", dict(threshold=0.9, cache="dual")),
                             ("4/step prefix", dict(steps=G // 4, cache="prefix")),
                             ("4/step dual", dict(steps=G // 4, cache="dual"))]:
            strategy = S.fast_dllm(gen_length=G, block_length=W, **kwargs)
            compile_s, run, result = timed(jdlm.decode, params, prompt, strategy, repeats=3)
            rows[name] = {"tokens_per_s": G / run, "run_s": run, "compile_s": compile_s,
                          "nfe": int(result.nfe[0])}
            print(label, name, rows[name], flush=True)
        report["prefix8b"] = rows
    if "batch8" in parts:
        cases = [("threshold:0.9 prefix", S.fast_dllm(gen_length=G, block_length=W, threshold=0.9, cache="prefix"), 8),
                 ("threshold:0.9 dual", S.fast_dllm(gen_length=G, block_length=W, threshold=0.9, cache="dual"), 8)]
        if hasattr(S, "parse_strategy"):  # trees with PrefixCache(windows=...)
            base = S.Strategy(schedule=S.Schedule(gen_length=G, block_length=W, steps=G))
            for windows, batch in [(1, 8), (4, 8), (1, 1), (4, 1)]:
                spec = f"threshold:0.9 prefix windows={windows}"
                cases.append((f"{spec} B={batch}", S.parse_strategy(spec, base), batch))
        rows = {}
        for name, strategy, batch in cases:
            prompt = np.random.default_rng(0).integers(0, 120000, size=(batch, 256)).astype(np.int32)
            compile_s, run, _ = timed(jdlm.decode, params, prompt, strategy, repeats=2)
            rows[name] = {"batch": batch, "tokens_per_s": batch * G / run, "run_s": run, "compile_s": compile_s}
            print(label, name, rows[name], flush=True)
        report["batch8"] = rows
    with open(f"{out}/{label}.json", "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:] or ["sweep", "prefix8b"])
