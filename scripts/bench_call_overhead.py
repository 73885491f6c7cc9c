"""What one `jdlm.decode` call costs beyond its forward passes, for a small model at batch 1 (issue 18: there the
speed-ups of few-forward strategies fall well short of their NFE ratios).

For the shipped `tiny` on one 4x4 sudoku prompt (24 new tokens in blocks of 8), low confidence with a fixed number of
steps, 3 to 24: each call's wall time (median of --repeats) against its NFE, fitted as `fixed + per_forward * NFE`.
`fixed` is what a call pays whatever its forwards: the host-side checks and argument building of `decode`, the
dispatch of the compiled loop, its transfers in and out, the loop's set-up and the result's return. `host_ms` is the
time until `decode` returns: the host's part where the loop runs on asynchronously (a CPU); on a GPU `decode`
returns only when the loop has finished (XLA reads a while loop's predicate back to the host every iteration), so
there it grows with the forwards and is all of the call but the result's return. Then the 3-step calls under
cProfile, to split the host's share of `fixed` by function. Writes call_overhead.json under $OUT (or --out).

    python scripts/bench_call_overhead.py             # the default device (a GPU, where it matters)
    python scripts/bench_call_overhead.py --quick     # fewer repeats (a CPU smoke run)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time
from pathlib import Path

import jax
import numpy as np

import jdlm
from jdlm import strategies as S
from jdlm.tasks import TASKS


def timed_calls(params, prompt, strategy, repeats: int) -> tuple[float, float]:
    """Median seconds of one `decode` call until its tokens are on the host, and until `decode` returns (the host's
    own part where the loop runs on asynchronously; see the module docstring), after one compiling call."""
    np.asarray(jdlm.decode(params, prompt, strategy).tokens)
    whole, host = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = jdlm.decode(params, prompt, strategy)
        host.append(time.perf_counter() - t0)
        np.asarray(result.tokens)
        whole.append(time.perf_counter() - t0)
    return statistics.median(whole), statistics.median(host)


def host_profile(params, prompt, strategy, calls: int) -> list[dict]:
    """The functions with the most cumulative host time per call, under cProfile."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        np.asarray(jdlm.decode(params, prompt, strategy).tokens)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, function), (_, ncalls, _, cumulative, _) in stats.stats.items():
        rows.append({"function": f"{Path(filename).name}:{line}({function})", "calls_per_decode": ncalls / calls,
                     "ms_per_decode": round(cumulative / calls * 1e3, 4)})
    return sorted(rows, key=lambda r: -r["ms_per_decode"])[:40]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per point (default 50; --quick 5)")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    repeats = args.repeats or (5 if args.quick else 50)
    params, tok = jdlm.load("tiny")
    example = TASKS["sudoku"].generate("eval", 1, seed=0)[0]
    prompt = np.asarray([tok.encode(TASKS["sudoku"].prompt(example.input))], np.int32)
    points = []
    for steps in (3, 6, 12, 24):
        strategy = S.Strategy(schedule=S.Schedule(gen_length=24, block_length=8, steps=steps),
                              rule=S.LowConfidence())
        seconds, host = timed_calls(params, prompt, strategy, repeats)
        points.append({"steps": steps, "nfe": steps, "ms": round(seconds * 1e3, 4), "host_ms": round(host * 1e3, 4)})
        print(json.dumps(points[-1]), flush=True)
    per_forward, fixed = np.polyfit([q["nfe"] for q in points], [q["ms"] for q in points], 1)
    strategy = S.Strategy(schedule=S.Schedule(gen_length=24, block_length=8, steps=3), rule=S.LowConfidence())
    profile = host_profile(params, prompt, strategy, repeats)
    summary = {"device": jax.devices()[0].device_kind, "model": "tiny", "batch": 1, "prompt_len": prompt.shape[1],
               "gen_length": 24, "repeats": repeats, "points": points, "fixed_ms": round(float(fixed), 4),
               "per_forward_ms": round(float(per_forward), 4), "host_profile_3_steps": profile}
    print(json.dumps({k: summary[k] for k in ("device", "fixed_ms", "per_forward_ms")}), flush=True)
    for row in profile[:15]:
        print(f"  {row['ms_per_decode']:8.4f} ms  {row['calls_per_decode']:6.1f}x  {row['function']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "call_overhead.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
