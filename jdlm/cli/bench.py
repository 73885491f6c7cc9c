"""`jdlm bench`: decode throughput per strategy and batch size."""

from __future__ import annotations

import sys

from jdlm.cli.args import (
    command,
    force_arg,
    mesh_args,
    model_args,
    non_negative_float,
    positive_int,
    strategy_args,
)
from jdlm.cli.common import (
    build_strategy,
    check_fits,
    check_steps,
    device_mesh,
    enable_compilation_cache,
    load_guide,
    load_model,
    note,
    runtime_layout,
    set_kernel_modes,
    stderr_console,
)
from jdlm.cli.examples import NEEDS_8B
from jdlm.cli.models import check_model, is_causal
from jdlm.cli.outputs import check_output
from jdlm.errors import UsageError
from jdlm.files import write_atomically


def add_parser(sub) -> None:
    p = command(sub, "bench", "decode throughput: tokens/s and NFE per strategy and batch size, against the floors",
                 "Benchmark decode throughput on random prompts: tokens/s (every generated position), NFE, and\n"
                 "compile time kept apart from run time (the median of --repeats runs after the compiling one).\n"
                 "Every time is also given as a ratio to its floor, measured in the same run: the device's matmul\n"
                 "rate and copy bandwidth, and the least time the decode's full forwards and cached steps could\n"
                 "take at those rates (1.0 is the device's limit; docs/performance.md).\n"
                 "Without --strategy it runs the reference set (LLaDA one token per step; Fast-dLLM threshold 0.9\n"
                 "with no, prefix and dual cache; 4 tokens per step with the dual cache). --random benchmarks\n"
                 "random weights at a published model's shapes, so no download is needed. --suite runs a grid.",
                 f"""
                 jdlm bench --gen-length 32 --prompt-length 16 --repeats 1
                 jdlm bench --strategy low_confidence --strategy threshold:0.9 --cache dual -n 32 --json b.json
                 jdlm bench --suite smoke --json smoke.json                  # the grid at tiny shapes, on a CPU
                 jdlm bench --random llada-8b --batch-size 1 --batch-size 8 --gen-length 256   {NEEDS_8B} and a GPU
                 jdlm bench --suite full --random llada-8b --json llada.json   {NEEDS_8B} and a GPU
                 jdlm bench --random llada-8b --mesh model=2 --batch-size 8   {NEEDS_8B} and 2 GPUs
                 """)
    model_args(p)
    mesh_args(p)
    p.add_argument("--random", metavar="SHAPE", choices=list(RANDOM_SHAPES),
                   help="random weights at these shapes instead of --model: llada-8b, dream-7b, test (2 layers) or "
                        "test-dream")
    p.add_argument("--suite", choices=["full", "smoke"],
                   help="the benchmark grid: full (LLaDA-8B and Dream-7B shapes, batch 1, 8, 32, prompts 256 and "
                        "2048, 256 tokens, one and four per step with the dual cache) or smoke (the same at tiny "
                        "shapes, seconds on a CPU); --random, --batch-size, --prompt-length, --strategy, "
                        "--gen-length and --block-length narrow or change it")
    strategy_args(p, repeatable=True, gen_length=128)
    p.set_defaults(gen_length=None)  # 128, or the suite's
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="forward passes for counted rules (default --gen-length)")
    p.add_argument("--prompt-length", type=positive_int, action="append", metavar="P",
                   help="prompt tokens (random ids); repeat for several (default 64)")
    p.add_argument("--batch-size", type=positive_int, action="append", metavar="B",
                   help="rows per decode; repeat for several (default 1)")
    p.add_argument("--repeats", type=positive_int, default=3, metavar="R",
                   help="timed runs after the compiling one (default 3)")
    p.add_argument("--budget", type=non_negative_float, default=None, metavar="SECONDS",
                   help="start no new model or batch/prompt cell after this many seconds; the JSON lists what was "
                        "skipped")
    p.add_argument("--json", dest="json_out", metavar="OUT.json",
                   help="also write the results as JSON (rewritten after every cell, so a run cut short keeps them)")
    force_arg(p, "the --json file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


RANDOM_SHAPES = ("llada-8b", "dream-7b", "test", "test-dream")


def run(args) -> int:
    """`jdlm bench`: jdlm.bench.bench_strategy for every model, batch size, prompt length and strategy (the floors
    measured first); a table on stdout, optional JSON."""
    check_output(args.json_out, "--json", (".json",), force=args.force)
    if not (args.random or args.suite) and is_causal(check_model(args.model)):  # before JAX: a typo fails at once
        raise UsageError(f"jdlm bench times masked-diffusion strategies and {args.model} is a causal model; "
                         "benchmark a diffusion model (tiny, a converted checkpoint, or --random SHAPE)")
    grid = _grid(args)
    args.gen_length = grid.gen_length
    args.block_length = args.block_length or grid.block_length
    check_steps(args)
    import jax
    import jax.numpy as jnp
    from rich.progress import Progress

    import jdlm.bench as jbench
    from jdlm import roofline, sharding
    from jdlm.bench_suite import (
        cell_order,
        describe_environment,
        run_grid,
        suite_strategies,
    )
    from jdlm.quantize import check_mode, mode_of, quantize_params

    check_mode(args.quantize)  # before any weights are made
    G = args.gen_length
    block = build_strategy(args, "low_confidence").schedule.block_length  # checks the lengths
    if args.strategy:
        strategies = {spec: build_strategy(args, spec, steps=args.steps) for spec in args.strategy}
    else:
        strategies = suite_strategies(G, block) if args.suite else jbench.default_strategies(G, block)
    console = stderr_console()
    mesh = device_mesh(args)
    enable_compilation_cache()
    set_kernel_modes(args)  # (runtime_layout does it too, but random weights on a mesh skip it)
    guides = {}  # model -> the --guide weights checked against it, or None
    dtype = {"auto": "float32" if jax.default_backend() == "cpu" else "bfloat16"}.get(args.dtype, args.dtype)
    plan, skipped_for_memory = {}, []  # random shapes: model -> the cells that fit, in order; those that do not
    if grid.models:
        rows = 2 if any(s.guidance for s in strategies.values()) else 1
        for name in grid.models:
            config = jbench.RANDOM_MODELS[name]()
            for prompt in grid.prompts:
                check_fits(prompt, G, config.max_seq_len)
            plan[name], misfits = _cells_that_fit(name, config, grid, G, block, dtype, rows)
            skipped_for_memory += misfits
        if not any(plan.values()):
            raise UsageError(skipped_for_memory[0]["reason"])

        def random_weights(name):
            params = quantize_params(jbench.random_params(name, jnp.dtype(dtype)), args.quantize)
            params = runtime_layout(args, params) if mesh is None else sharding.shard_params(params, mesh)
            guides[name] = load_guide(args, params)
            return params

        models = {name: (lambda name=name: random_weights(name)) for name in grid.models}
        source = "random " + ", ".join(grid.models)
    else:
        params, _, loaded = load_model(args, mesh)
        for prompt in grid.prompts:
            check_fits(prompt, G, params.config.max_seq_len)
        guides[args.model] = load_guide(args, params)
        models, source = {args.model: lambda: params}, args.model
        if not args.quiet:
            note(console, loaded)
        dtype = str(params.dtype)
    quantized = mode_of(params.weights) if not grid.models else args.quantize
    if quantized:
        source += f", {quantized} weights"
    if mesh is not None:
        source += f", {sharding.describe(mesh)}"
    floors = roofline.measure_floors(dtype, quick=jax.default_backend() == "cpu")
    environment = describe_environment()

    def cells(model, params):
        if model in plan:
            return plan[model]
        return cell_order(params.config, grid.batches, grid.prompts, G, block, str(params.dtype))

    def write(results, skipped=()):
        if args.json_out:
            text = jbench.to_json(results, floors, skipped, environment) + "\n"
            write_atomically(args.json_out, lambda tmp: tmp.write_text(text))

    results = []
    with Progress(console=console, transient=True, disable=args.quiet or not console.is_interactive) as bar:
        task = bar.add_task("benchmarking", total=len(grid.models or [1]) * len(grid.batches) * len(grid.prompts)
                            * len(strategies))

        def run_cell(params, model, batch, prompt, name, strategy):
            r = jbench.bench_strategy(params, name, strategy, batch=batch, prompt_len=prompt, repeats=args.repeats,
                                      guide=guides[model] if strategy.guide is not None else None, floors=floors,
                                      model=model)
            results.append(r)
            write(results)
            bar.advance(task)
            return r

        results, skipped = run_grid(models, cells, strategies, run_cell=run_cell, budget_s=args.budget,
                                    progress=lambda text: bar.update(task, description=text))
    skipped = skipped_for_memory + skipped
    _print_bench(results, source, floors)
    write(results, skipped)
    if skipped and not args.quiet:
        note(console, f"skipped {len(skipped)} runs or cells (the JSON's \"skipped\" says why)")
    if args.json_out:
        note(console, f"wrote {args.json_out}")
    return 0


def _grid(args):
    """The models, batch sizes, prompt lengths and lengths to run: the suite's, narrowed by the flags given."""
    from jdlm.bench_suite import SUITES, Grid

    if args.suite:
        suite = SUITES[args.suite]
        return Grid(models=(args.random,) if args.random else suite.models,
                    batches=tuple(args.batch_size or suite.batches), prompts=tuple(args.prompt_length or suite.prompts),
                    gen_length=args.gen_length or suite.gen_length,
                    block_length=args.block_length or suite.block_length)
    return Grid(models=(args.random,) if args.random else (), batches=tuple(args.batch_size or [1]),
                prompts=tuple(args.prompt_length or [64]), gen_length=args.gen_length or 128,
                block_length=args.block_length)


def _cells_that_fit(name: str, config, grid, gen_length: int, block_length: int, dtype: str, rows: int):
    """--random allocates a published model's weights: (the (batch, prompt) cells whose decode fits the device,
    least memory first; the others as skipped records), instead of failing inside XLA."""
    from jdlm.bench_suite import cell_bytes, cell_order
    from jdlm.cli.memory import GB, available_bytes

    have, where = available_bytes()
    fit, misfits = [], []
    for batch, prompt in cell_order(config, grid.batches, grid.prompts, gen_length, block_length, dtype):
        need = cell_bytes(config, rows * batch, prompt, gen_length, block_length, dtype)
        if have is None or need <= have:
            fit.append((batch, prompt))
            continue
        reason = (f"--random {name} at batch {batch} with a {prompt}-token prompt in {dtype} needs about "
                  f"{need / GB:.1f} GB (weights, KV cache, activations) but {where} has {have / GB:.1f} GB; use a "
                  "smaller --batch-size or --prompt-length")
        misfits.append({"model": name, "batch": batch, "prompt_len": prompt, "strategy": None, "reason": reason})
    return fit, misfits


def _print_bench(results, source: str, floors) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    device = results[0].device if results else "?"
    rates = "" if floors is None else f" (floors: {floors.matmul_tflops:,.3g} TFLOP/s, {floors.copy_gbps:,.3g} GB/s)"
    table = Table(title=f"decode throughput: {source} on {device}{rates}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  caption="/floor: time over the least time at the measured rates (docs/performance.md); step: "
                          "a cached step, ms", caption_justify="left")
    table.add_column("strategy", min_width=14, overflow="fold")
    for column in ("B", "P", "tok/s", "NFE", "run s", "/floor", "step", "/floor", "compile"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r.strategy, str(r.batch), str(r.prompt_len), f"{r.tokens_per_s:.0f}", f"{r.nfe:.0f}",
                      f"{r.run_s:.3f}", _ratio(r.floor_ratio),
                      "-" if r.cached_step_ms is None else f"{r.cached_step_ms:.2f}", _ratio(r.cached_step_ratio),
                      f"{r.compile_s:.1f}")
    Console(highlight=False, width=None if sys.stdout.isatty() else 120).print(table)  # a file: no cropping


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}"
