"""Command-line entry shared by scripts/train_mdm.py and scripts/train_ar.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from jdlm.checkpoint import packaged_model_dir
from jdlm.errors import PlotUnavailable
from jdlm.training.trainer import TrainConfig, export, plot_loss, train


def _pairs(text: str, cast) -> dict:
    """"sudoku=1000,countdown=2000" -> {"sudoku": 1000, "countdown": 2000}."""
    out = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        out[name.strip()] = cast(value)
    return out


def _in_shipped_models(path: Path) -> bool:
    """Whether `path` lies in a jdlm/models folder: the installed package's or a working tree's."""
    parts = path.resolve().parts
    return any(parts[i:i + 2] == ("jdlm", "models") for i in range(len(parts) - 1))


def main(objective: str, model: str, argv=None) -> None:
    defaults = TrainConfig(objective=objective, model=model)
    shipped = packaged_model_dir(model)
    p = argparse.ArgumentParser(description=f"Train jdlm's {model!r} model ({objective} objective) on the task "
                                "suite. Rerun the same command to resume an interrupted run.")
    p.add_argument("--run-dir", default=f"runs/{model}", help="checkpoints, metrics and data cache")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--export", help="where the finished jdlm checkpoint goes (default RUN_DIR/model)")
    where.add_argument("--ship", action="store_true", help=f"export over the model shipped with jdlm ({shipped}), "
                       f"which jdlm.load({model!r}) loads")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup", type=int, default=defaults.warmup)
    p.add_argument("--seq-len", type=int, default=defaults.seq_len)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--save-every", type=int, default=defaults.save_every)
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--examples", default=",".join(f"{k}={v}" for k, v in defaults.examples.items()),
                   help="train examples generated per task, e.g. sudoku=200000,countdown=1200000")
    p.add_argument("--weights", default=",".join(f"{k}={v}" for k, v in defaults.weights.items()),
                   help="task mixture of each batch")
    p.add_argument("--model-overrides", default="{}", help="JSON dict of ModelConfig fields to change")
    p.add_argument("--difficulty", default=json.dumps(defaults.difficulty),
                   help='JSON: per-task generator settings, e.g. \'{"countdown": {"n_sources": [3, 4]}}\' '
                   "(default: %(default)s)")
    p.add_argument("--ragged-ends", action=argparse.BooleanOptionalAction, default=defaults.ragged_ends,
                   help="masked diffusion: rows end at random lengths after their answer (default: %(default)s)")
    p.add_argument("--suffix-share", type=float, default=defaults.suffix_share,
                   help="masked diffusion: share of rows masked from a random cut on (default: %(default)s)")
    p.add_argument("--init-from", default=None, help="start from this jdlm checkpoint's weights (fine-tuning)")
    p.add_argument("--time-limit-minutes", type=float, default=None,
                   help="stop at the first checkpoint after this long (rerun the same command to go on)")
    p.add_argument("--export-unfinished", action="store_true",
                   help="when --time-limit-minutes stops the run, export its weights as they stand (the manifest "
                   "records the step reached; the learning-rate schedule has not finished)")
    p.add_argument("--compute-dtype", default=defaults.compute_dtype, choices=["bfloat16", "float32"])
    args = p.parse_args(argv)
    dst = shipped if args.ship else Path(args.export or Path(args.run_dir) / "model")
    if not args.ship and _in_shipped_models(dst):
        p.error(f"--export {dst} is inside a jdlm/models folder, where jdlm's shipped models live; use --ship to "
                "replace one on purpose")
    config = dataclasses.replace(
        defaults, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        seq_len=args.seq_len, seed=args.seed, save_every=args.save_every, log_every=args.log_every,
        examples=_pairs(args.examples, int), weights=_pairs(args.weights, float),
        model_overrides=json.loads(args.model_overrides), compute_dtype=args.compute_dtype,
        difficulty=json.loads(args.difficulty), init_from=args.init_from, ragged_ends=args.ragged_ends,
        suffix_share=args.suffix_share)
    time_limit = None if args.time_limit_minutes is None else args.time_limit_minutes * 60
    state = train(config, args.run_dir, time_limit_s=time_limit)
    finished = int(state.step) >= config.steps
    if not finished:
        print(f"stopped at step {int(state.step)} of {config.steps}: rerun the same command to resume", flush=True)
        if not args.export_unfinished:
            return
    path = export(config, state, args.run_dir, dst, extra=None if finished else {"unfinished": True})
    print(f"exported {path}" + ("" if finished else f" (unfinished: step {int(state.step)})"), flush=True)
    try:
        plot_loss(args.run_dir, Path(args.run_dir) / "loss.png")
    except PlotUnavailable as e:
        print(f"note: no loss plot: {e}", flush=True)
