"""Start-up time with the persistent compilation cache: from launching a process to its first decoded tokens.

Runs the same decode in fresh processes that share a new, empty compilation cache (JDLM_COMPILATION_CACHE):
the first compiles and fills the cache (JAX's persistent cache and jdlm's store of decode executables,
`jdlm.decoding.executables`), the second loads every compiled program from it, and a third does the same with the
store off (JDLM_EXECUTABLE_CACHE=0: JAX's persistent cache alone, which still traces and lowers). Each process
starts loading the decode's stored programs in the background from the weights' shapes (`jdlm.decoding.prefetch`;
a fourth process, like the second otherwise, skips that), creates random weights (`jdlm.bench.random_params`),
then decodes one prompt one step at a time (`jdlm.decoding.decode_steps`, as `jdlm generate --show` does): its
first tokens exist after the first step. It
then runs the whole decode as one compiled call (`jdlm.decode`, as `jdlm generate` does). Times are wall-clock from
the parent's launch of the process (interpreter start and imports included), with the child's breakdown: per
phase, the seconds JAX spent tracing, lowering and compiling or loading from its cache (`jax.monitoring`), and
what the store did (programs loaded / stored and the seconds it took). Last, `jax_floor`: a process that runs
nothing of jdlm's, only jax's import, the backend's start and three small first programs (an add, a matmul, cuDNN's
attention), the second of two such processes: what any JAX program pays on this machine before its own work.

    python scripts/bench_startup.py                  # LLaDA-8B shapes, bf16, on a GPU; target: second < 3 s
    python scripts/bench_startup.py --quick          # tiny shapes on a CPU, seconds

Writes $OUT/startup.json (OUT defaults to ./results).
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

TARGET_S = 3.0


# jdlm.decoding.executables' events: store_load_s is loading a stored program (for a prefetched one, what its first
# call waited for it), store_prefetch_s a background load (`prefetch`), store_write_s storing one
JAX_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
              "/jax/core/compile/backend_compile_duration": "compile_or_cache_load_s",
              "/jdlm/executables/load_duration": "store_load_s",
              "/jdlm/executables/prefetch_duration": "store_prefetch_s",
              "/jdlm/executables/store_duration": "store_write_s"}


def child(args) -> None:
    """One process: imports, weights, first step, whole decode; prints one JSON line of absolute times."""
    marks = {"started": time.time()}
    import jax
    import jax.numpy as jnp

    marks["jax_imported"] = time.time()
    events = []  # (end time, field, seconds) of every trace, lowering and compile

    def listen(event, seconds, **kwargs):
        if event in JAX_EVENTS:
            events.append((time.time(), JAX_EVENTS[event], seconds))

    jax.monitoring.register_event_duration_secs_listener(listen)

    from jdlm import bench
    from jdlm import strategies as S
    from jdlm.bench_suite import describe_environment
    from jdlm.cli.common import enable_compilation_cache
    from jdlm.decoding import abstract_params, decode, decode_steps, executables, prefetch
    from jdlm.model import param_shapes

    marks["imported"] = time.time()
    cache = enable_compilation_cache()
    device = jax.devices()[0]
    marks["backend"] = time.time()
    config, dtype = bench.RANDOM_MODELS[args.model](), jnp.dtype(args.dtype)
    base = S.Strategy(schedule=S.Schedule(gen_length=args.gen_length, block_length=args.block_length,
                                          steps=args.gen_length))
    strategy = S.parse_strategy(args.strategy, base)
    prompt = bench.random_prompt(config, 1, args.prompt_length)
    prefetched = 0
    if not args.no_prefetch:  # the decode's stored programs load while the weights are made
        shapes = abstract_params(param_shapes(config, dtype))
        prefetched = prefetch(shapes, prompt, strategy, steps=True) + prefetch(shapes, prompt, strategy)
    params = bench.random_params(args.model, dtype)
    jax.block_until_ready(params.weights)
    marks["weights"] = time.time()
    store = {"weights": _store_counts(executables)}
    first = next(decode_steps(params, prompt, strategy))
    jax.block_until_ready(first.tokens)
    marks["first_tokens"] = time.time()
    store["first_step"] = _store_counts(executables)
    result = decode(params, prompt, strategy)
    jax.block_until_ready(result.tokens)
    marks["decoded"] = time.time()
    store["decode"] = _store_counts(executables)
    phases = {"weights": ("backend", "weights"), "first_step": ("weights", "first_tokens"),
              "decode": ("first_tokens", "decoded")}
    jax_work = {phase: {"programs": 0, **dict.fromkeys(JAX_EVENTS.values(), 0.0)} for phase in phases}
    for at, field, seconds in events:
        for phase, (start, end) in phases.items():
            if marks[start] < at <= marks[end]:
                jax_work[phase][field] = round(jax_work[phase][field] + seconds, 3)
                jax_work[phase]["programs"] += field == "lower_s"
    print(json.dumps({"marks": marks, "device": device.device_kind, "environment": describe_environment(),
                      "cache": None if cache is None else str(cache),
                      "jax": jax_work, "store": _store_deltas(store),
                      "store_dir": None if executables.store_directory() is None else
                      str(executables.store_directory()),
                      "prefetched": prefetched,
                      "revealed_first_step": int((first.tokens != params.config.mask_id).sum()),
                      "nfe": int(result.nfe[0])}), flush=True)


def floor_child() -> None:
    """A process that does nothing of jdlm's: imports jax, starts the backend and runs its first small programs (an
    add, a bf16 matmul, cuDNN's attention on a GPU), each from the persistent cache when a process before filled it.
    What any JAX program on this machine pays before its own work; prints one JSON line of absolute times."""
    marks = {"started": time.time()}
    import jax
    import jax.numpy as jnp

    marks["jax_imported"] = time.time()
    from jdlm.cli.common import enable_compilation_cache

    enable_compilation_cache()
    jax.devices()
    marks["backend"] = time.time()
    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.zeros((), jnp.float32)))
    marks["first_op"] = time.time()
    a = jnp.ones((1024, 1024), jnp.bfloat16)
    jax.block_until_ready(jax.jit(lambda a: a @ a)(a))
    marks["first_matmul"] = time.time()
    q = jnp.ones((1, 64, 4, 128), jnp.bfloat16)
    impl = "cudnn" if jax.default_backend() == "gpu" else "xla"
    jax.block_until_ready(jax.jit(lambda q: jax.nn.dot_product_attention(q, q, q, implementation=impl))(q))
    marks["first_attention"] = time.time()
    print(json.dumps({"marks": marks, "device": jax.devices()[0].device_kind}), flush=True)


def launch_floor(args, cache_dir: Path) -> dict:
    """`floor_child` twice in fresh interpreters sharing `cache_dir` (the first fills it); the second's times
    relative to its launch."""
    env = {**os.environ, "JDLM_COMPILATION_CACHE": str(cache_dir)}
    for _ in range(2):
        launched, report = run_child([sys.executable, __file__, "--floor-child"], env, args.timeout)
        if "error" in report:
            return report
    return {f"{name}_s": round(at - launched, 3) for name, at in report["marks"].items()}


def run_child(command: list[str], env: dict, timeout: float) -> tuple[float, dict]:
    """(launch time, the child's last stdout line as JSON), or an {"error": ...} report for a child that failed or
    ran past `timeout` (killed: nothing of it is left holding the device)."""
    launched = time.time()
    try:
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return launched, {"error": f"no result within --timeout {timeout:g} s"}
    if out.returncode != 0:
        return launched, {"error": f"exit code {out.returncode}: {out.stderr[-2000:]}"}
    return launched, json.loads(out.stdout.strip().splitlines()[-1])


def _store_counts(executables) -> dict:
    return dict(executables.EVENTS)


def _store_deltas(store: dict) -> dict:
    """What the store did in each phase (`store` holds the running counts at each phase's end):
    {"weights": {"loaded": 7}, "first_step": {"loaded": 2}, "decode": {"loaded": 1}}."""
    out, before = {}, {}
    for phase, counts in store.items():
        out[phase] = {k: v - before.get(k, 0) for k, v in counts.items() if v != before.get(k, 0)}
        before = counts
    return out


def launch(args, cache_dir: Path, store: bool = True, prefetch: bool = True) -> dict:
    """Runs `child` in a fresh interpreter (with jdlm's store of executables on or off, prefetching its programs or
    not); its times relative to the launch."""
    env = {**os.environ, "JDLM_COMPILATION_CACHE": str(cache_dir), "JDLM_EXECUTABLE_CACHE": "1" if store else "0"}
    command = [sys.executable, __file__, "--child", "--model", args.model, "--dtype", args.dtype,
               "--prompt-length", str(args.prompt_length), "--gen-length", str(args.gen_length),
               "--block-length", str(args.block_length), "--strategy", args.strategy] + \
        ([] if prefetch else ["--no-prefetch"])
    launched, report = run_child(command, env, args.timeout)
    if "error" in report:
        return report
    marks = report.pop("marks")
    since = {f"{name}_s": round(marks[name] - launched, 3) for name in marks}
    steps = {"import_s": marks["imported"] - marks["started"], "import_jax_s": marks["jax_imported"] - marks["started"],
             "backend_s": marks["backend"] - marks["imported"],
             "weights_s": marks["weights"] - marks["backend"], "first_step_s": marks["first_tokens"] - marks["weights"],
             "decode_s": marks["decoded"] - marks["first_tokens"]}
    return {"since_launch": since, "steps": {k: round(v, 3) for k, v in steps.items()}, **report}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(p, timeout_s=120.0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--floor-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-prefetch", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    fill_shape_defaults(args)
    if args.child:
        child(args)
        return 0
    if args.floor_child:
        floor_child()
        return 0
    out_dir = Path(os.environ.get("OUT", "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(tempfile.mkdtemp(prefix="jdlm-startup-cache-"))
    try:
        first = launch(args, cache_dir)
        entries = [e for e in cache_dir.rglob("*") if e.is_file()]
        cache_files, cache_bytes = len(entries), sum(e.stat().st_size for e in entries)
        failed = {"error": "the first process failed"}
        second = launch(args, cache_dir) if "error" not in first else failed
        without_store = launch(args, cache_dir, store=False) if "error" not in first else failed
        without_prefetch = launch(args, cache_dir, prefetch=False) if "error" not in first else failed
        jax_floor = launch_floor(args, cache_dir)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    seconds = second.get("since_launch", {}).get("first_tokens_s")
    environment = second.pop("environment", None) or first.get("environment")
    first.pop("environment", None)
    without_store.pop("environment", None)
    without_prefetch.pop("environment", None)
    before = without_store.get("since_launch", {}).get("first_tokens_s")
    report = {"model": args.model, "dtype": args.dtype, "prompt_length": args.prompt_length,
              "gen_length": args.gen_length, "block_length": args.block_length, "strategy": args.strategy,
              "device": second.get("device", first.get("device")),
              "environment": environment,
              "target_s": TARGET_S,
              "second_first_tokens_s": seconds, "second_under_target": None if seconds is None else seconds < TARGET_S,
              "second_first_tokens_without_store_s": before,
              "cache_files": cache_files, "cache_bytes": cache_bytes,
              "second_first_tokens_without_prefetch_s": without_prefetch.get("since_launch", {}).get("first_tokens_s"),
              "first_process": first, "second_process": second, "second_process_without_store": without_store,
              "second_process_without_prefetch": without_prefetch,
              "jax_floor": jax_floor}
    (out_dir / "startup.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 1 if seconds is None else 0


if __name__ == "__main__":
    sys.exit(main())
