"""`jdlm bench`: decode throughput per strategy and batch size."""

from __future__ import annotations

from jdlm.cli.args import command, force_arg, mesh_args, model_args, positive_int, strategy_args
from jdlm.cli.common import (
    build_strategy,
    check_fits,
    check_steps,
    device_mesh,
    load_guide,
    load_model,
    note,
    stderr_console,
)
from jdlm.cli.examples import NEEDS_8B
from jdlm.cli.models import check_model, is_causal
from jdlm.cli.outputs import check_output, write_atomically
from jdlm.errors import UsageError


def add_parser(sub) -> None:
    p = command(sub, "bench", "decode throughput: tokens/s and NFE per strategy and batch size",
                 "Benchmark decode throughput on random prompts: tokens/s (every generated position), NFE, and\n"
                 "compile time kept apart from run time (the median of --repeats runs after the compiling one).\n"
                 "Without --strategy it runs the reference set (LLaDA one token per step; Fast-dLLM threshold 0.9\n"
                 "with no, prefix and dual cache; 4 tokens per step with the dual cache). --random benchmarks\n"
                 "random weights at a published model's shapes, so no download is needed.",
                 f"""
                 jdlm bench --gen-length 32 --prompt-length 16 --repeats 1
                 jdlm bench --strategy low_confidence --strategy threshold:0.9 --cache dual -n 32 --json b.json
                 jdlm bench --random llada-8b --batch-size 1 --batch-size 8 --gen-length 256   {NEEDS_8B} and a GPU
                 jdlm bench --random llada-8b --mesh model=2 --batch-size 8   {NEEDS_8B} and 2 GPUs
                 """)
    model_args(p)
    mesh_args(p)
    p.add_argument("--random", metavar="SHAPE", choices=["llada-8b", "dream-7b", "test"],
                   help="random weights at these shapes instead of --model: llada-8b, dream-7b or test (2 layers)")
    strategy_args(p, repeatable=True, gen_length=128)
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="forward passes for counted rules (default --gen-length)")
    p.add_argument("--prompt-length", type=positive_int, default=64, metavar="P",
                   help="prompt tokens (random ids, default 64)")
    p.add_argument("--batch-size", type=positive_int, action="append", metavar="B",
                   help="rows per decode; repeat for several (default 1)")
    p.add_argument("--repeats", type=positive_int, default=3, metavar="R",
                   help="timed runs after the compiling one (default 3)")
    p.add_argument("--json", dest="json_out", metavar="OUT.json", help="also write the results as JSON")
    force_arg(p, "the --json file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args) -> int:
    """`jdlm bench`: jdlm.bench.run for every strategy and batch size; a table on stdout, optional JSON."""
    check_output(args.json_out, "--json", (".json",), force=args.force)
    if not args.random and is_causal(check_model(args.model)):  # before JAX is imported: a typo fails at once
        raise UsageError(f"jdlm bench times masked-diffusion strategies and {args.model} is a causal model; "
                         "benchmark a diffusion model (tiny, a converted checkpoint, or --random SHAPE)")
    check_steps(args)
    import jax
    import jax.numpy as jnp
    from rich.progress import Progress

    import jdlm.bench as jbench
    from jdlm import sharding

    G = args.gen_length
    if args.strategy:
        strategies = {spec: build_strategy(args, spec, steps=args.steps) for spec in args.strategy}
    else:
        block = build_strategy(args, "low_confidence").schedule.block_length  # checks the lengths
        strategies = jbench.default_strategies(G, block)
    console = stderr_console()
    mesh = device_mesh(args)
    if args.random:
        dtype = {"auto": "float32" if jax.default_backend() == "cpu" else "bfloat16"}.get(args.dtype, args.dtype)
        _check_random_fits(args, dtype, jbench.RANDOM_MODELS[args.random](), strategies)
        params = jbench.random_params(args.random, jnp.dtype(dtype))
        if mesh is not None:
            params = sharding.shard_params(params, mesh)
        source = f"random {args.random}"
    else:
        params, _, loaded = load_model(args, mesh)
        source = args.model
        if not args.quiet:
            note(console, loaded)
    if mesh is not None:
        source += f", {sharding.describe(mesh)}"
    check_fits(args.prompt_length, G, params.config.max_seq_len)
    guide = load_guide(args, params)

    results = []
    batches = args.batch_size or [1]
    with Progress(console=console, transient=True, disable=args.quiet or not console.is_interactive) as bar:
        task = bar.add_task("benchmarking", total=len(strategies) * len(batches))
        for batch in batches:
            for name, strategy in strategies.items():
                bar.update(task, description=f"{name}, batch {batch}")
                results += jbench.run(params, {name: strategy}, batch=batch, prompt_len=args.prompt_length,
                                      repeats=args.repeats, progress=None, guide=guide)
                bar.advance(task)
    _print_bench(results, source)
    if args.json_out:
        write_atomically(args.json_out, lambda tmp: tmp.write_text(jbench.to_json(results) + "\n"))
        note(console, f"wrote {args.json_out}")
    return 0


def _check_random_fits(args, dtype: str, config, strategies) -> None:
    """--random allocates a published model's weights: refuse at once if they, the KV cache and the activations of
    the largest batch cannot fit, instead of failing inside XLA."""
    from jdlm.cli.memory import check_fits_memory

    guided = any(s.guidance for s in strategies.values())
    rows = max(args.batch_size or [1]) * (2 if guided else 1)
    check_fits_memory(config, dtype, f"--random {args.random}", rows=rows,
                      seq_len=args.prompt_length + args.gen_length)


def _print_bench(results, source: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"decode throughput: {source} on {results[0].device if results else '?'}",
                  title_justify="left")
    for column in ("strategy", "batch", "tokens/s", "NFE", "run s", "compile s"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for r in results:
        table.add_row(r.strategy, str(r.batch), f"{r.tokens_per_s:,.1f}", f"{r.nfe:.1f}", f"{r.run_s:.3f}",
                      f"{r.compile_s:.1f}")
    Console(highlight=False).print(table)
