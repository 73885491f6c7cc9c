"""`jdlm train-sampler`: train a joint sampler head (ADJUST) for a frozen model on its own trajectories."""

from __future__ import annotations

from pathlib import Path

from jdlm.cli.args import command, positive_int
from jdlm.errors import UsageError

DEFAULT_RUN_DIR = "runs/sampler"


def add_parser(sub) -> None:
    from jdlm.joint.config import DEFAULT_TASKS, SamplerTrainConfig

    d = SamplerTrainConfig()
    p = command(sub, "train-sampler", "train a joint sampler head for a model (k tokens per forward pass)",
                "Train the one-layer sampler head of approximate joint sampling (ADJUST) on top of a frozen model:\n"
                "the model decodes task prompts one token per forward pass, and the head learns to predict the\n"
                "model's distribution after the next few tokens are revealed. Rerun the same command to resume.\n"
                "The head is written to --export (default RUN_DIR/head); use it with\n"
                "jdlm.joint.JointSampler.load(HEAD_DIR, k=4) as a strategy's proposer.",
                """
                jdlm train-sampler --model tiny --run-dir runs/sampler
                jdlm train-sampler --model tiny --steps 200 --trajectories 256 --tasks pycode=1
                """)
    p.add_argument("--model", "-m", default=d.base, metavar="NAME|DIR",
                   help=f"the frozen model: a packaged name or a jdlm checkpoint directory (default {d.base})")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=d.compute_dtype,
                   help=f"compute dtype of the model and the head (default {d.compute_dtype})")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=f"checkpoints, metrics, trajectories (default "
                   f"{DEFAULT_RUN_DIR})")
    p.add_argument("--export", default=None, metavar="DIR", help="where the trained head goes (default RUN_DIR/head)")
    p.add_argument("--tasks", default=",".join(f"{k}={v}" for k, v in DEFAULT_TASKS.items()), metavar="NAME=SHARE,...",
                   help="task prompts the model decodes, with their shares")
    for flag, value, text in (("--trajectories", d.trajectories, "prompts decoded"),
                              ("--steps", d.steps, "training steps"), ("--batch-size", d.batch_size, "examples a step"),
                              ("--gen-length", d.gen_length, "tokens per trajectory"),
                              ("--block-length", d.block_length, "tokens per block (divides --gen-length)"),
                              ("--max-unroll", d.max_unroll, "longest unroll of the head (< --block-length)"),
                              ("--prompt-length", d.prompt_length, "padded prompt length"),
                              ("--trajectory-batch", d.trajectory_batch, "prompts decoded at once for trajectories"),
                              ("--warmup", d.warmup, "learning-rate warmup steps"),
                              ("--save-every", d.save_every, "steps between checkpoints"),
                              ("--log-every", d.log_every, "steps between metric lines")):
        p.add_argument(flag, type=positive_int, default=value, metavar="N", help=f"{text} (default {value})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help=f"sampling temperature of the trajectories (default {d.temperature})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"data, batches and initialisation (default {d.seed})")


def _tasks(text: str) -> dict[str, float]:
    from jdlm.tasks import TASKS

    tasks = {}
    for item in filter(None, text.split(",")):
        name, _, share = item.partition("=")
        name = name.strip()
        if name not in TASKS:
            raise UsageError(f"--tasks: unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
        try:
            tasks[name] = float(share) if share else 1.0
        except ValueError:
            raise UsageError(f"--tasks: share of {name} must be a number, got {share!r}") from None
    if not tasks:
        raise UsageError("--tasks: name at least one task, e.g. pycode=1")
    return tasks


def run(args) -> int:
    from jdlm.errors import PlotUnavailable
    from jdlm.joint.config import SamplerTrainConfig
    from jdlm.joint.train import export_head, plot_sampler_loss, train_sampler

    try:
        config = SamplerTrainConfig(
            base=args.model, tasks=_tasks(args.tasks), trajectories=args.trajectories, steps=args.steps,
            batch_size=args.batch_size, gen_length=args.gen_length, block_length=args.block_length,
            max_unroll=args.max_unroll, prompt_length=args.prompt_length, warmup=args.warmup,
            trajectory_batch=args.trajectory_batch,
            save_every=args.save_every, log_every=args.log_every, lr=args.lr, temperature=args.temperature,
            seed=args.seed, compute_dtype=args.dtype)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not (args.lr > 0 and args.temperature >= 0):
        raise UsageError(f"--lr must be > 0 and --temperature >= 0, got {args.lr} and {args.temperature}")
    run_dir = Path(args.run_dir)
    try:
        state = train_sampler(config, run_dir)
    except ValueError as e:  # a run directory holding another configuration
        raise UsageError(str(e)) from None
    import jdlm

    base = jdlm.load(config.base)[0]
    print(f"exported {export_head(config, state, base, args.export or run_dir / 'head')}", flush=True)
    try:
        plot_sampler_loss(run_dir, run_dir / "loss.png")
        print(f"loss curve {run_dir / 'loss.png'}", flush=True)
    except PlotUnavailable as e:
        print(f"note: no loss plot: {e}", flush=True)
    return 0
