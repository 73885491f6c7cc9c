"""Memory per device of the compiled decode at LLaDA-8B shapes, from XLA's memory analysis, next to jdlm's estimate.

For every batch size, context (prompt + generation), mesh (one device; model=2: tensor parallel; data=2: data
parallel) and strategy (low_confidence without a cache; threshold:0.9 with the dual cache), the jitted decode is
compiled against abstract inputs (jax.ShapeDtypeStruct weights carrying their shardings: no weight is allocated)
and `compiled.memory_analysis()` gives, per device, the bytes of its arguments (weights, prompt), outputs,
temporaries (decode state, KV cache, activations, logits) and generated code. `jdlm.memory.decode_memory` is the
analytic estimate of the same. Writes memory_table.json and memory_table.md under --out (default $OUT).

    python scripts/memory_table.py --quick                       # tiny shapes on 8 host CPU devices, seconds
    python scripts/memory_table.py --out docs/scaling            # LLaDA-8B shapes (compile only; see --help)

On CPU the script gives itself 8 host devices, so every mesh compiles without GPUs; the analysis is then that of
XLA's CPU compilation (no cuDNN flash attention: the attention scores count). On a GPU machine the single-device
rows use the GPU; meshes need as many GPUs as they have devices, else they compile on host CPU devices
(JAX_PLATFORMS=cpu).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):  # before JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # compiling allocates nothing; workers share GPUs

MESHES = {"one": None, "model=2": dict(data=1, model=2), "data=2": dict(data=2, model=1)}
STRATEGIES = {"low_confidence": "low_confidence", "threshold:0.9 dual": "threshold:0.9 dual"}
FULL = dict(model="llada-8b", batches=(1, 2, 4, 8, 16, 32, 64), contexts=(512, 1024, 2048, 4096), gen_length=256,
            block_length=32)
QUICK = dict(model="test", batches=(1, 4), contexts=(64,), gen_length=32, block_length=16)
GIB = 2 ** 30


def tasks(args, shapes: dict, device_count: int) -> list[dict]:
    """One dict per compile: mesh, strategy, context and batch, in table order."""
    out = []
    for mesh in args.mesh or list(MESHES):
        if MESHES[mesh] is not None and device_count < 2:
            log(f"skipping mesh {mesh}: needs 2 devices, {device_count} visible")
            continue
        for strategy in args.strategy or list(STRATEGIES):
            for context in args.context or shapes["contexts"]:
                for batch in args.batch or shapes["batches"]:
                    out.append(dict(mesh=mesh, strategy=strategy, context=context, batch=batch,
                                    model_name=shapes["model"], gen_length=shapes["gen_length"],
                                    block_length=shapes["block_length"], dtype=args.dtype))
    return out


def measure(task: dict) -> dict:
    """Compiles one decode and returns its table row: XLA's memory analysis and jdlm's estimate, per device."""
    import jax
    import jax.numpy as jnp

    from jdlm import bench, memory, sharding
    from jdlm import strategies as S

    config = bench.RANDOM_MODELS[task["model_name"]]()  # "test": jdlm.tiny(), 4 heads: splits in two
    dtype, G, W = task["dtype"], task["gen_length"], task["block_length"]
    sizes = MESHES[task["mesh"]]
    mesh = None if sizes is None else sharding.make_mesh(**sizes, devices=jax.devices()[:2])
    data, model = (1, 1) if sizes is None else (sizes["data"], sizes["model"])
    P, batch = task["context"] - G, task["batch"]
    strategy = S.parse_strategy(STRATEGIES[task["strategy"]],
                                S.Strategy(schedule=S.Schedule(gen_length=G, block_length=W, steps=G)))
    t0 = time.perf_counter()
    xla = memory.compiled_decode(config, jnp.dtype(dtype), strategy, -(-batch // data) * data, P,
                                 mesh).memory_analysis()
    compile_s = time.perf_counter() - t0
    flash = jax.default_backend() == "gpu" and dtype != "float32"  # cuDNN attention keeps no [T, S] scores
    est = memory.decode_memory(config, batch=batch, prompt_len=P, gen_length=G, block_length=W,
                               cache="dual" if "dual" in task["strategy"] else "none", dtype=dtype, data=data,
                               model=model, flash_attention=flash)
    sizes_xla = dict(argument=xla.argument_size_in_bytes, output=xla.output_size_in_bytes,
                     temp=xla.temp_size_in_bytes, alias=xla.alias_size_in_bytes,
                     generated_code=xla.generated_code_size_in_bytes)
    sizes_xla["total"] = sizes_xla["argument"] + sizes_xla["output"] + sizes_xla["temp"] - sizes_xla["alias"]
    row = dict(mesh=task["mesh"], data=data, model=model, devices=data * model, strategy=task["strategy"],
               context=task["context"], prompt_len=P, gen_length=G, batch=batch, compile_s=round(compile_s, 2),
               flash_attention=flash, xla=sizes_xla, estimate=est.as_dict(),
               estimate_over_xla=round(est.total / sizes_xla["total"], 3))
    unit, scale = ("MiB", 2 ** 20) if task["model_name"] == "test" else ("GiB", GIB)
    log(f"{task['mesh']:>7} {task['strategy']:>18} ctx {task['context']:>5} B {batch:>3}: XLA "
        f"{sizes_xla['total'] / scale:8.2f} {unit} (temp {sizes_xla['temp'] / scale:7.2f}), estimate "
        f"{est.total / scale:8.2f} {unit}, compiled in {compile_s:.1f} s")
    return row


def measure_all(todo: list[dict], workers: int):
    """`measure` over every task, rows yielded in order; in `workers` processes at once (compiling is mostly one
    core)."""
    if workers <= 1:
        yield from map(measure, todo)
        return
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(measure, todo)


def markdown(rows: list[dict], header: str, unit: str, scale: int) -> str:
    lines = [header, "",
             f"| mesh | strategy | context | B | XLA total {unit} | XLA args | XLA temp | estimate {unit} | weights "
             "| KV cache | activations | logits | estimate / XLA |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        x, e = r["xla"], r["estimate"]
        cells = [x["total"], x["argument"], x["temp"], e["total"], e["weights"], e["kv_cache"], e["activations"],
                 e["logits"]]
        lines.append(f"| {r['mesh']} | {r['strategy']} | {r['context']} | {r['batch']} | "
                     + " | ".join(f"{c / scale:.2f}" for c in cells) + f" | {r['estimate_over_xla']:.2f} |")
    return "\n".join(lines) + "\n"


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes (2 layers, context 64, B 1 and 4): a minute on 2 CPU cores")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for memory_table.json / .md (default $OUT)")
    p.add_argument("--batch", type=int, action="append", help="batch size; repeat (default 1 2 4 ... 64)")
    p.add_argument("--context", type=int, action="append", help="prompt + generation; repeat (default 512 ... 4096)")
    p.add_argument("--mesh", action="append", choices=list(MESHES), help="repeat (default all three)")
    p.add_argument("--strategy", action="append", choices=list(STRATEGIES), help="repeat (default both)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="weights (default bfloat16; float32 with --quick)")
    p.add_argument("--workers", type=int, default=1,
                   help="compile in this many processes at once (default 1); each compile is mostly one core")
    args = p.parse_args(argv)
    if not args.out:
        p.error("give --out DIR or set OUT")

    import jax

    shapes = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    devices = jax.devices()
    log(f"{shapes['model']} shapes on {len(devices)} x {devices[0].device_kind} ({jax.default_backend()})")
    t0 = time.perf_counter()
    args.dtype = args.dtype or ("float32" if args.quick else "bfloat16")
    unit, scale = ("MiB", 2 ** 20) if args.quick else ("GiB", GIB)
    header = (f"Memory per device of the compiled decode, {shapes['model']} shapes in {args.dtype}, generation "
              f"{shapes['gen_length']} in blocks of {shapes['block_length']}, XLA {jax.default_backend()} "
              f"({devices[0].device_kind}), jax {jax.__version__}. {unit} = 2^{20 if args.quick else 30} bytes.")
    rows: list[dict] = []
    report = dict(model=shapes["model"], dtype=args.dtype, backend=jax.default_backend(),
                  device=devices[0].device_kind, visible_devices=len(devices), gen_length=shapes["gen_length"],
                  block_length=shapes["block_length"], jax=jax.__version__, seconds=0.0, rows=rows)
    for row in measure_all(tasks(args, shapes, len(devices)), args.workers):
        rows.append(row)  # written after every row: a run cut short keeps what it measured
        report["seconds"] = round(time.perf_counter() - t0, 1)
        (out / "memory_table.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "memory_table.md").write_text(markdown(rows, header, unit, scale))
    log(f"wrote {out / 'memory_table.json'} and {out / 'memory_table.md'} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
