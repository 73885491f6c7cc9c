"""`jdlm convert`, `jdlm inspect`, `jdlm eval` and `jdlm bench`."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from jdlm.cli import UsageError
from jdlm.cli_decode import build_strategy, load_model, note, stderr_console

# ---------------------------------------------------------------- convert


def convert(args) -> int:
    """`jdlm convert`: convert.convert_checkpoint with a progress bar."""
    from convert.convert import convert_checkpoint

    t0 = time.perf_counter()
    dst = convert_checkpoint(args.family, args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite,
                             progress=not args.quiet)
    console = stderr_console()
    note(console, f"wrote {dst} in {time.perf_counter() - t0:.1f} s; next: jdlm inspect {dst}", "green")
    note(console, f'try it: jdlm generate --model {dst} "Hello!"')
    return 0


# ---------------------------------------------------------------- inspect

_SUMMARY_SKIP = ("params", "files", "source_files")  # per-tensor / per-file tables: counted, not listed


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _tree_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe_checkpoint(path: str) -> dict:
    """What `jdlm inspect` reports, as a JSON-ready dict; reads config.json and manifest.json, no weights."""
    from jdlm.checkpoint import resolve
    from jdlm.config import ModelConfig, from_hf, read_config_json

    directory = resolve(path)
    raw = read_config_json(directory)
    files = {p.name + ("/" if p.is_dir() else ""): _tree_size(p) for p in sorted(directory.iterdir())
             if not p.name.startswith(".")}
    info = {"path": str(directory.resolve()), "files": files, "total_bytes": sum(files.values())}
    if "jdlm_config" in raw:
        config = ModelConfig.from_dict(raw["jdlm_config"])
        manifest_path = directory / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        summary = {k: v for k, v in manifest.items() if k not in _SUMMARY_SKIP}
        summary["tensors"] = len(manifest.get("params", {}))
        if "source_files" in manifest:
            summary["source_files"] = len(manifest["source_files"])
        info.update(kind="jdlm", config=config.to_dict(), n_params=config.n_params, dtype=manifest.get("dtype"),
                    manifest=summary,
                    complete=manifest_path.exists() and (directory / "params").is_dir())
    else:
        info.update(kind="huggingface", dtype=raw.get("torch_dtype") or raw.get("dtype"),
                    model_type=raw.get("model_type"))
        try:
            config = from_hf(raw, str(directory / "config.json"))
            info.update(config=config.to_dict(), n_params=config.n_params,
                        hint=f"convert it first: jdlm convert {config.family} {directory} DST")
        except Exception as e:  # any family jdlm cannot read: report it, do not fail inspect
            info.update(hint=f"not a model jdlm can convert ({str(e).splitlines()[0]})")
    return info


def inspect(args) -> int:
    """`jdlm inspect`: config, parameter count, dtype, files, manifest."""
    info = describe_checkpoint(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    head = Table.grid(padding=(0, 2))
    head.add_row("path", info["path"])
    head.add_row("kind", "jdlm checkpoint" if info["kind"] == "jdlm" else "Hugging Face checkpoint (not converted)")
    if "n_params" in info:
        head.add_row("parameters", f"{info['n_params']:,} ({info['n_params'] / 1e6:.1f}M)")
    head.add_row("dtype", str(info.get("dtype")))
    head.add_row("size", human_size(info["total_bytes"]))
    if info.get("hint"):
        head.add_row("next", info["hint"])
    if info["kind"] == "jdlm" and not info["complete"]:
        head.add_row("warning", "manifest.json or params/ is missing: this checkpoint will not load")
    console.print(head)
    if "config" in info:
        table = Table(title="config", title_justify="left", show_header=False)
        for k, v in info["config"].items():
            table.add_row(k, str(v))
        console.print(table)
    if info.get("manifest"):
        table = Table(title="manifest", title_justify="left", show_header=False)
        for k, v in info["manifest"].items():
            table.add_row(k, str(v))
        console.print(table)
    table = Table(title="files", title_justify="left")
    table.add_column("name")
    table.add_column("size", justify="right")
    for name, size in info["files"].items():
        table.add_row(name, human_size(size))
    console.print(table)
    return 0


# ---------------------------------------------------------------- eval and bench (modules of their own)


def _module(name: str, needs: tuple[str, ...], command: str):
    """Imports jdlm.eval / jdlm.bench, or says in one line that this installation does not have it yet."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        module = None
    if module is None or not all(hasattr(module, f) for f in needs):
        raise UsageError(f"'jdlm {command}' needs {name} ({', '.join(needs)}), which this jdlm installation does "
                         "not have yet; update jdlm (pip install -U jdlm, or git pull in a source checkout)")
    return module


def _check_output(path: str | None, flag: str, suffixes: tuple[str, ...]) -> None:
    if path is None:
        return
    p = Path(path).expanduser()
    if p.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {path}: give a file ending in {' or '.join(suffixes)}")
    if not p.parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {p.parent} does not exist; create it or choose another path")


def evaluate(args) -> int:
    """`jdlm eval`: jdlm.eval.evaluate for every (task, strategy); a table on stdout, optional JSON and plot."""
    jeval = _module("jdlm.eval", ("evaluate", "EvalSpec", "task_settings", "format_table", "write_json",
                                  "plot_pareto"), "eval")
    from jdlm.tasks import TASKS

    tasks = args.task or list(TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    examples = None
    if args.data is not None:
        if len(tasks) != 1:
            raise UsageError("--data needs exactly one --task (the one that prompts and scores its examples)")
        if not Path(args.data).expanduser().is_file():
            raise UsageError(f"--data {args.data}: no such file")
        from jdlm.tasks import load_jsonl

        try:
            examples = load_jsonl(Path(args.data).expanduser())
        except ValueError as e:
            raise UsageError(f"--data: {e}") from None
        if not examples:
            raise UsageError(f"--data {args.data} holds no examples")
    _check_output(args.json_out, "--json", (".json",))
    _check_output(args.plot, "--plot", (".png", ".pdf", ".svg"))
    specs = []
    for text in args.strategy or ["low_confidence"]:
        try:
            rule = _parse_rule(text)
            k = args.tokens_per_step if rule.counted else 1  # threshold / factor choose their own count
            specs.append(jeval.EvalSpec(rule=rule, cache=args.cache, tokens_per_step=k,
                                        temperature=args.temperature))
        except ValueError as e:
            raise UsageError(f"--strategy {text}: {e}") from None

    params, tokenizer, loaded = load_model(args)
    # Every (task, strategy) pair is checked before anything is decoded, so a bad combination fails at once.
    settings = {}
    for task in tasks:
        try:
            settings[task] = jeval.task_settings(TASKS[task], tokenizer, gen_length=args.gen_length,
                                                 block_length=args.block_length)
            for spec in specs:
                spec.strategy(settings[task])
        except ValueError as e:
            raise UsageError(f"{task}: {e}") from None
    console = stderr_console()
    if not args.quiet:
        note(console, loaded)
    import jax

    reports = []
    for task in tasks:
        for spec in specs:
            reports.append(jeval.evaluate(params, tokenizer, task, spec, examples=examples, limit=args.limit,
                                          batch_size=args.batch_size, progress=not args.quiet,
                                          key=jax.random.key(args.seed), settings=settings[task]))
    print(jeval.format_table(reports))
    if args.json_out:
        note(console, f"wrote {jeval.write_json(reports, Path(args.json_out).expanduser())}")
    if args.plot:
        note(console, f"wrote {jeval.plot_pareto(reports, Path(args.plot).expanduser())}")
    return 0


def _parse_rule(text: str):
    from jdlm.decoding import parse_rule

    return parse_rule(text)


def bench(args) -> int:
    """`jdlm bench`: jdlm.bench.run for every strategy and batch size; a table on stdout, optional JSON."""
    jbench = _module("jdlm.bench", ("run", "random_params", "default_strategies", "to_json"), "bench")
    import jax
    import jax.numpy as jnp
    from rich.progress import Progress

    from jdlm.cli_decode import check_fits

    _check_output(args.json_out, "--json", (".json",))
    G = args.gen_length
    if args.strategy:
        strategies = {spec: build_strategy(args, spec, steps=args.steps) for spec in args.strategy}
    else:
        block = build_strategy(args, "low_confidence").schedule.block  # checks the lengths
        strategies = jbench.default_strategies(G, block)
    console = stderr_console()
    if args.random:
        dtype = {"auto": jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16}.get(args.dtype, args.dtype)
        params = jbench.random_params(args.random, dtype)
        source = f"random {args.random}"
    else:
        params, _, loaded = load_model(args)
        source = args.model
        if not args.quiet:
            note(console, loaded)
    check_fits(args.prompt_length, G, params.config.max_seq_len)

    results = []
    batches = args.batch_size or [1]
    with Progress(console=console, transient=True, disable=args.quiet or not console.is_interactive) as bar:
        task = bar.add_task("benchmarking", total=len(strategies) * len(batches))
        for batch in batches:
            for name, strategy in strategies.items():
                bar.update(task, description=f"{name}, batch {batch}")
                results += jbench.run(params, {name: strategy}, batch=batch, prompt_len=args.prompt_length,
                                      repeats=args.repeats, progress=None)
                bar.advance(task)
    _print_bench(results, source)
    if args.json_out:
        Path(args.json_out).expanduser().write_text(jbench.to_json(results) + "\n")
        note(console, f"wrote {args.json_out}")
    return 0


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
