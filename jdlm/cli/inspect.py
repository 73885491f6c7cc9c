"""`jdlm inspect`: describe a checkpoint without loading its weights."""

from __future__ import annotations

import json
from pathlib import Path

from jdlm.cli.args import command
from jdlm.cli.examples import NEEDS_8B
from jdlm.cli.models import check_model

_SUMMARY_SKIP = ("params", "files", "bytes", "source_files")  # per-tensor / per-file tables: counted, not listed


def add_parser(sub) -> None:
    p = command(sub, "inspect", "describe a checkpoint: config, parameters, dtype, files",
                 "Describe a checkpoint directory (or a packaged model): its config, parameter count, dtype, files\n"
                 "with sizes and the manifest (source, creation date). Loads no weights. A Hugging Face directory\n"
                 "is recognised and the conversion command suggested.",
                 f"""
                 jdlm inspect tiny
                 jdlm inspect tiny-ar --json
                 jdlm inspect ~/jdlm/llada-8b-instruct   {NEEDS_8B}, converted first
                 """)
    p.add_argument("path", metavar="NAME|DIR", help="checkpoint directory or packaged model name")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


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
    from jdlm.checkpoint import read_manifest
    from jdlm.config import from_hf, load_config, read_config_json

    directory = check_model(path, flag="")
    raw = read_config_json(directory)
    files = {p.name + ("/" if p.is_dir() else ""): _tree_size(p) for p in sorted(directory.iterdir())
             if not p.name.startswith(".")}
    info = {"path": str(directory.resolve()), "files": files, "total_bytes": sum(files.values())}
    if "jdlm_config" in raw:
        config = load_config(directory)
        manifest_path = directory / "manifest.json"
        manifest = read_manifest(directory) if manifest_path.exists() else {}
        summary = {k: v for k, v in manifest.items() if k not in _SUMMARY_SKIP}
        summary["tensors"] = len(manifest.get("params", {}))
        if "source_files" in manifest:
            summary["source_files"] = len(manifest["source_files"])
        info.update(kind="jdlm", config=config.to_dict(), n_params=config.n_params, dtype=manifest.get("dtype"),
                    decoding="causal" if config.causal else "masked diffusion", manifest=summary,
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


def run(args) -> int:
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
    quantized = info.get("manifest", {}).get("quantization", {}).get("mode")
    head.add_row("dtype", str(info.get("dtype")) + (f" ({quantized} linear weights)" if quantized else ""))
    if "decoding" in info:
        head.add_row("decoding", "causal: greedy, left to right" if info["decoding"] == "causal" else
                     "masked diffusion: any --strategy")
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
