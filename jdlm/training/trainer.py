"""Training loop for jdlm's small models: optax, orbax checkpoints with resume, progress, export."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdlm.config import ModelConfig
from jdlm.errors import CheckpointError, PlotUnavailable
from jdlm.files import write_atomically
from jdlm.model import Params, init_params
from jdlm.training import presets
from jdlm.training.data import Pool, batch_indices, generate_pool
from jdlm.training.objectives import OBJECTIVES

MODELS = {"tiny": presets.tiny_mdm_config, "tiny-ar": presets.tiny_ar_config}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that defines a training run; saved as `run_dir/train_config.json` and beside the weights.

    examples: train-split examples generated per task; weights: the task mixture of each batch;
    difficulty: per-task generator settings (e.g. {"countdown": {"n_sources": [3, 4]}}).
    model_overrides: ModelConfig fields replacing those of the `model` preset (e.g. a smaller test model).
    init_from: a jdlm checkpoint (path or packaged name) whose weights start the run (fine-tuning).
    """

    objective: str = "mdm"
    model: str = "tiny"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    seq_len: int = 224
    batch_size: int = 256
    steps: int = 20_000
    lr: float = 1e-3
    warmup: int = 500
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    compute_dtype: str = "bfloat16"
    seed: int = 0
    examples: dict = dataclasses.field(default_factory=lambda: {
        "sudoku": 150_000, "sudoku9": 400_000, "countdown": 1_500_000, "arithmetic": 200_000,
        "multistep": 500_000, "code": 30_000, "pycode": 300_000})
    weights: dict = dataclasses.field(default_factory=lambda: {
        "sudoku": 0.05, "sudoku9": 0.25, "countdown": 0.33, "arithmetic": 0.06, "multistep": 0.15, "code": 0.08,
        "pycode": 0.08})
    # Varied inputs and several solutions per countdown instance; 8 symmetric copies per found sudoku (cheap data).
    difficulty: dict = dataclasses.field(default_factory=lambda: {
        "countdown": {"formats": ["csv", "arrow", "words", "sentence", "reach"], "solutions": 3},
        "sudoku9": {"formats": ["line", "dots", "grid"], "variants": 8}})
    # The masked-diffusion objective's masks (jdlm.training.objectives.mdm_noise): rows that end soon after their
    # answer, and rows masked from a random cut on as a semi-autoregressive decode leaves them. Not used by "ar".
    ragged_ends: bool = True
    suffix_share: float = 0.3
    init_from: str | None = None
    save_every: int = 1000
    log_every: int = 100

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        unknown = set(self.weights) - set(self.examples)
        if unknown:
            raise ValueError(f"weights name tasks without examples: {sorted(unknown)}")

    def model_config(self) -> ModelConfig:
        return dataclasses.replace(MODELS[self.model](), **self.model_overrides)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    weights: dict
    opt_state: optax.OptState


def warmup_cosine_adamw(lr: float, warmup: int, steps: int, *, grad_clip: float, weight_decay: float,
                        end_fraction: float, b2: float = 0.999) -> optax.GradientTransformation:
    """AdamW behind global-norm clipping; the rate warms up linearly over `warmup` steps, then decays on a cosine
    to `end_fraction * lr` at `steps`."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), end_value=lr * end_fraction)
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(schedule, b2=b2, weight_decay=weight_decay))


def optimizer(config: TrainConfig) -> optax.GradientTransformation:
    return warmup_cosine_adamw(config.lr, config.warmup, config.steps, grad_clip=config.grad_clip,
                               weight_decay=config.weight_decay, end_fraction=0.05, b2=0.98)


def make_train_step(config: TrainConfig, model: ModelConfig, tx: optax.GradientTransformation):
    objective = OBJECTIVES[config.objective]
    if config.objective == "mdm":
        objective = functools.partial(objective, ragged_ends=config.ragged_ends, suffix_share=config.suffix_share)
    dtype = jnp.dtype(config.compute_dtype)

    @jax.jit
    def train_step(state: TrainState, tokens, prompt_len, answer_len, key):
        def loss_fn(weights):
            cast = jax.tree.map(lambda w: w.astype(dtype), weights)
            cast["embed"] = weights["embed"]  # gathered in float32, then cast (see model.forward)
            params = Params(config=model, weights=cast)
            return objective(params, tokens, prompt_len, answer_len, key)

        return gradient_step(state, loss_fn, tx)

    return train_step


def gradient_step(state: TrainState, loss_fn, tx: optax.GradientTransformation) -> tuple[TrainState, dict]:
    """One optimiser step on `loss_fn(weights) -> (loss, metrics)`; the metrics gain `loss` and `grad_norm`."""
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.weights)
    updates, opt_state = tx.update(grads, state.opt_state, state.weights)
    weights = optax.apply_updates(state.weights, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return TrainState(step=state.step + 1, weights=weights, opt_state=opt_state), metrics


def claim_run_dir(run_dir: str | Path, config_file: str, config_json: str) -> Path:
    """`run_dir` (resolved, created) with `config_json` saved in it as `config_file`; ValueError if it holds a run
    with another configuration (the same one resumes)."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / config_file
    if saved.exists() and json.loads(saved.read_text()) != json.loads(config_json):
        raise ValueError(f"{run_dir} holds a run with a different configuration ({saved}); use a new run directory "
                         "or the same settings to resume")
    saved.write_text(config_json + "\n")
    return run_dir


def load_or_build_pool(config: TrainConfig, tokenizer, run_dir: Path) -> Pool:
    """The tokenised example pool, cached in the run directory (written atomically)."""
    path = run_dir / "pool.npz"
    if path.exists():
        return Pool.load(path)
    t0 = time.time()
    pool = generate_pool(config.examples, run_dir / "tokenizer", tokenizer.config, config.seq_len, seed=config.seed,
                         difficulty=config.difficulty)
    write_atomically(path, pool.save)
    print(f"data: {len(pool)} examples of {config.seq_len} tokens in {time.time() - t0:.0f}s", flush=True)
    return pool


def _write_tokenizer(config: TrainConfig, directory: Path) -> None:
    """The run's tokenizer: the one of the checkpoint it starts from (its weights are tied to those ids), else the
    small-model BPE built from the task corpus. Written atomically."""
    from jdlm.checkpoint import resolve

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if config.init_from:
        source = resolve(config.init_from)
        tmp.mkdir(parents=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(source / name, tmp / name)
    else:
        presets.build_task_tokenizer(tmp)
    os.replace(tmp, directory)


def train(config: TrainConfig, run_dir: str | Path, *, on_step: Callable[[int, dict], None] | None = None,
          progress: bool = True, time_limit_s: float | None = None) -> TrainState:
    """Trains (or resumes) a run in `run_dir`; returns the final state.

    Checkpoints (weights, optimiser state, step) go to `run_dir/checkpoints` every `save_every` steps, at the end,
    and when interrupted (Ctrl-C): rerunning the same command resumes from the latest one and gives the same
    result as an uninterrupted run (batches and noise are pure functions of (seed, step)). A latest checkpoint that
    cannot be read is moved to `run_dir/unreadable-checkpoints` with a warning and the one before it is used. Metrics
    are appended to `run_dir/metrics.jsonl`; on resume, rows after the restored step are dropped first (they are
    logged again). `on_step(step, metrics)` is called after every logged step. With `time_limit_s`, training stops
    at the first checkpoint after that many seconds (the returned state's step is then below `config.steps`; rerun
    to go on).
    """
    import orbax.checkpoint as ocp

    from jdlm.tokenizer import Tokenizer

    run_dir = claim_run_dir(run_dir, "train_config.json", config.to_json())
    model = config.model_config()
    tok_dir = run_dir / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        _write_tokenizer(config, tok_dir)
    tokenizer = Tokenizer.from_dir(tok_dir, model)
    pool = load_or_build_pool(config, tokenizer, run_dir)

    tx = optimizer(config)
    if config.init_from:
        from jdlm.checkpoint import load_params

        start = load_params(config.init_from, jnp.float32)
        if start.config != model:
            raise ValueError(f"init_from {config.init_from} has a different architecture than this run's model")
        weights = start.weights
    else:
        weights = init_params(model, jax.random.key(config.seed), jnp.float32).weights
    replicated, split_batch = data_parallel(config.batch_size)
    state = jax.device_put(TrainState(step=jnp.int32(0), weights=weights, opt_state=tx.init(weights)), replicated)
    options = ocp.CheckpointManagerOptions(max_to_keep=2, save_interval_steps=1)
    with ocp.CheckpointManager(run_dir / "checkpoints", options=options) as manager:
        state = _restore(manager, state, run_dir)
        step_fn = make_train_step(config, model, tx)
        start = int(state.step)
        _drop_metrics_after(run_dir / "metrics.jsonl", start)
        log = open(run_dir / "metrics.jsonl", "a")
        bar = _ProgressBar(config.steps, start) if progress and sys.stdout.isatty() else None
        t0, tokens_seen = time.time(), 0
        try:
            for step in range(start, config.steps):
                rows = batch_indices(pool, config.weights, config.batch_size, step, config.seed)
                key = jax.random.fold_in(jax.random.key(config.seed), step)
                batch = jax.device_put((pool.tokens[rows], pool.prompt_len[rows], pool.answer_len[rows]), split_batch)
                state, metrics = step_fn(state, *batch, key)
                tokens_seen += config.batch_size * config.seq_len
                done = step + 1
                if done % config.log_every == 0 or done == config.steps:
                    m = {k: float(v) for k, v in metrics.items()}
                    elapsed = time.time() - t0
                    m.update(step=done, elapsed_s=round(elapsed, 1), tokens_per_s=round(tokens_seen / elapsed))
                    log.write(json.dumps(m) + "\n")
                    log.flush()
                    if bar is not None:
                        bar.update(done, f"loss {m['loss']:.4f}  {m['tokens_per_s'] / 1e6:.2f}M tok/s")
                    elif progress:
                        eta = elapsed / (done - start) * (config.steps - done)
                        print(f"step {done}/{config.steps} loss {m['loss']:.4f} grad {m['grad_norm']:.2f} "
                              f"{m['tokens_per_s'] / 1e6:.2f}M tok/s eta {eta / 60:.1f} min", flush=True)
                    if on_step is not None:
                        on_step(done, m)
                if done % config.save_every == 0:
                    manager.save(done, args=ocp.args.StandardSave(state))
                    if time_limit_s is not None and time.time() - t0 > time_limit_s:
                        print(f"time limit: stopping at step {done} of {config.steps}; rerun to resume", flush=True)
                        break
        except KeyboardInterrupt:
            print(f"interrupted: saving step {int(state.step)}; rerun the same command to resume", flush=True)
            manager.save(int(state.step), args=ocp.args.StandardSave(state), force=True)
            manager.wait_until_finished()
            raise
        finally:
            log.close()
            if bar is not None:
                bar.close()
        if manager.latest_step() != int(state.step):
            manager.save(int(state.step), args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()
    return state


def data_parallel(batch_size: int):
    """(sharding of the replicated state, sharding of a batch split over rows) on every visible device.

    With one device (or a batch that the devices do not divide) both are that one device: plain training. The
    loss is a mean over rows either way, so the result does not depend on the number of devices.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()
    if len(devices) > 1 and batch_size % len(devices):
        print(f"note: batch {batch_size} does not split over {len(devices)} devices; training on one", flush=True)
        devices = devices[:1]
    if len(devices) > 1:
        print(f"data parallel over {len(devices)} devices", flush=True)
    mesh = Mesh(np.array(devices), ("data",))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))


def _restore(manager, state: TrainState, run_dir: Path) -> TrainState:
    """The newest readable checkpoint's state (`state` itself when there is none).

    Unreadable newer checkpoints are moved aside (so that their steps can be saved again) only once an older one
    has been read; when none can be read, nothing is moved and CheckpointError says what to do.
    """
    import orbax.checkpoint as ocp

    steps = sorted(manager.all_steps(), reverse=True)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    unreadable = []
    for step in steps:
        try:
            restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax and tensorstore raise many types (JSON, array reads) for a damaged checkpoint
            print(f"warning: checkpoint {step} cannot be read ({type(e).__name__}); trying the one before it",
                  flush=True)
            unreadable.append(step)
            continue
        aside = run_dir / "unreadable-checkpoints"
        for bad in unreadable:
            aside.mkdir(exist_ok=True)
            shutil.move(Path(manager.directory) / str(bad), aside / str(bad))
            print(f"warning: moved unreadable checkpoint {bad} to {aside / str(bad)}", flush=True)
        manager.reload()
        print(f"resumed from step {int(restored.step)}", flush=True)
        return restored
    if steps:
        raise CheckpointError(f"no checkpoint in {manager.directory} can be read (steps {sorted(steps)}); start again "
                              "in a new --run-dir, or delete that folder")
    return state


def _drop_metrics_after(path: Path, step: int) -> None:
    """Keeps the rows of metrics.jsonl up to `step` (a resumed run logs later steps again); written atomically."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
        write_atomically(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


class _ProgressBar:
    """A rich progress bar over training steps (used on a terminal; logs get one line per logged step)."""

    def __init__(self, total: int, start: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._p = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                           TextColumn("{task.description}"))
        self._p.start()
        self._task = self._p.add_task("", total=total, completed=start)

    def update(self, step: int, text: str) -> None:
        self._p.update(self._task, completed=step, description=text)

    def close(self) -> None:
        self._p.stop()


def export(config: TrainConfig, state: TrainState, run_dir: str | Path, dst: str | Path, *,
           dtype=jnp.bfloat16, overwrite: bool = True, extra: dict | None = None) -> Path:
    """Writes the trained weights as a jdlm checkpoint (with the tokenizer and the training config)."""
    from jdlm.checkpoint import save

    run_dir = Path(run_dir)
    params = Params(config=config.model_config(), weights=jax.tree.map(lambda w: w.astype(dtype), state.weights))
    tok_dir = run_dir / "tokenizer"
    manifest = {"training": json.loads(config.to_json()), "steps": int(state.step)}
    manifest.update(extra or {})
    return save(dst, params, tokenizer_files=sorted(tok_dir.iterdir()), manifest=manifest, overwrite=overwrite)


def plot_loss(run_dir: str | Path, path: str | Path) -> None:
    """Loss curve (PNG) from `run_dir/metrics.jsonl`. Raises PlotUnavailable without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable('matplotlib is not installed (pip install "jdlm[plot]")') from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]
    steps = np.array([r["step"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in rows], label="loss")
    key = "masked_ce" if "masked_ce" in rows[0] else "answer_ce"
    ax.plot(steps, [r[key] for r in rows], label=key.replace("_", " "))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(Path(run_dir).name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
