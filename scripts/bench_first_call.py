"""Where a decode's first call goes in a fresh process, at LLaDA-8B shapes, without allocating any weight.

Each entry point of the decode (`init`, `advance`: `decode_steps`' two programs; `decode_loop`: `decode`'s) is
traced, lowered and compiled from abstract inputs (`jax.ShapeDtypeStruct`, as `jdlm.memory.compiled_decode`) in two
fresh processes sharing a new cache: the first compiles (filling JAX's persistent cache) and serializes each
program as jdlm's store does (`jdlm.decoding.executables`); the second traces and lowers again, loads the program
from JAX's persistent cache (`compile_s`: hashing the module for the key, reading and loading the executable), and
then loads the serialized program (`store_load_s`: what a second process pays with the store on, instead of
trace + lower + compile).

    python scripts/bench_first_call.py            # LLaDA-8B shapes, bf16 (CPU: about a minute; no weights)
    python scripts/bench_first_call.py --quick    # tiny shapes, float32, seconds

Writes $OUT/first_call.json (OUT defaults to ./results).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from startup_args import add_shape_arguments, fill_shape_defaults


def child(args, cache: Path) -> dict:
    """Traces, lowers and compiles each entry point; the first process also serializes, the second loads."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import serialize_executable

    from jdlm import bench
    from jdlm import strategies as S
    from jdlm.decoding import loop
    from jdlm.memory import _abstract_inputs

    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    config = bench.RANDOM_MODELS[args.model]()
    base = S.Strategy(schedule=S.Schedule(gen_length=args.gen_length, block_length=args.block_length,
                                          steps=args.gen_length))
    strategy = S.parse_strategy(args.strategy, base).for_model(config)
    params, prompt, keys = _abstract_inputs(config, jnp.dtype(args.dtype), 1, args.prompt_length, None)
    tables = jax.tree.map(jnp.asarray, strategy.schedule.tables())
    init_args = (params, prompt, None, keys, strategy, tables)
    inputs, state = jax.eval_shape(loop._init, *init_args)
    entry_points = {"init": (loop._init, init_args), "advance": (loop._advance, (inputs, state, strategy)),
                    "decode_loop": (loop._decode_loop, init_args)}
    out = {}
    for name, (jitted, call_args) in entry_points.items():
        times = {}
        started = time.perf_counter()
        traced = jitted.trace(*call_args)
        times["trace_s"] = time.perf_counter() - started
        started = time.perf_counter()
        lowered = traced.lower()
        times["lower_s"] = time.perf_counter() - started
        started = time.perf_counter()
        compiled = lowered.compile()
        times["compile_s"] = time.perf_counter() - started
        path = cache / f"{name}.serialized"
        if args.stage == "first":
            started = time.perf_counter()
            executable, in_tree, out_tree = serialize_executable.serialize(compiled)
            path.write_bytes(executable)
            times["store_s"] = time.perf_counter() - started
            times["executable_bytes"] = len(executable)
        else:
            _, in_tree, out_tree = serialize_executable.serialize(compiled)  # the trees come with the file
            started = time.perf_counter()
            serialize_executable.deserialize_and_load(path.read_bytes(), in_tree, out_tree)
            times["store_load_s"] = time.perf_counter() - started
        out[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in times.items()}
    return {"device": jax.devices()[0].device_kind, "entry_points": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(p, timeout_s=300.0)
    p.add_argument("--stage", choices=("first", "second"), help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    fill_shape_defaults(args)
    if args.stage:
        print(json.dumps(child(args, Path(args.cache))), flush=True)
        return 0
    out_dir = Path(os.environ.get("OUT", "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="jdlm-first-call-"))
    report = {"model": args.model, "dtype": args.dtype, "prompt_length": args.prompt_length,
              "gen_length": args.gen_length, "block_length": args.block_length, "strategy": args.strategy}
    try:
        for stage in ("first", "second"):
            command = [sys.executable, __file__, "--stage", stage, "--cache", str(cache), "--model", args.model,
                       "--dtype", args.dtype, "--prompt-length", str(args.prompt_length), "--gen-length",
                       str(args.gen_length), "--block-length", str(args.block_length), "--strategy", args.strategy]
            run = subprocess.run(command, capture_output=True, text=True, check=False, timeout=args.timeout)
            if run.returncode != 0:
                report[stage] = {"error": f"exit code {run.returncode}: {run.stderr[-2000:]}"}
                break
            report[stage] = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    second = report.get("second", {}).get("entry_points")
    if second:  # a second process's first call of each program: persistent cache alone, or the store
        report["summary"] = {name: {"persistent_cache_s": round(t["trace_s"] + t["lower_s"] + t["compile_s"], 3),
                                    "store_s": t["store_load_s"]} for name, t in second.items()}
    (out_dir / "first_call.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0 if second else 1


if __name__ == "__main__":
    sys.exit(main())
