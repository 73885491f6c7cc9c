"""Training the joint sampler head on the frozen base model's own trajectories (ADJUST, REFERENCE.md §3.5).

Data: the frozen base decodes task prompts one token per full forward pass (lowest entropy first, sampled at
`temperature`), in blocks; the order of reveals gives every intermediate state. An example is a state s_t (t tokens
revealed) and an unroll count n: the head starts from the base's hidden states at s_t and is unrolled n times,
seeing s_{t+1}, ..., s_{t+n} (one more revealed token each); its predictions after the n-th unroll are fitted to
the base's own distribution at s_{t+n} by KL(base || head), averaged over the block's positions still masked at
s_{t+n}. n is drawn with weights 0.5^n up to `max_unroll` (short unrolls common), per example (every step runs
`max_unroll` head passes and takes the n-th, so this costs the same as per batch and compiles once).

Runs resume: the head, optimiser state and step are checkpointed with orbax (`run_dir/checkpoints`), batches are
pure functions of (seed, step), so an interrupted run continues to the same result. Metrics go to
`run_dir/metrics.jsonl`, each a mean over the steps since the last line (`loss`, and `marginal_kl`: the same KL
for the base's marginals at s_t, i.e. without the head; `loss_n1`, `marginal_kl_n1`: both over the one-unroll
examples alone, where the head has the least to predict).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdlm.files import write_atomically
from jdlm.joint.config import SamplerTrainConfig
from jdlm.joint.head import SamplerHead, head_hidden, init_head, save_head
from jdlm.model import Params, forward, lm_head
from jdlm.training.trainer import (
    TrainState,
    claim_run_dir,
    data_parallel,
    gradient_step,
    warmup_cosine_adamw,
)


@flax.struct.dataclass
class Trajectories:
    """Decodes of the frozen base, one token per forward. N trajectories, P prompt, G generation.

    prompt: [N, P] int32 left-padded; prompt_mask: [N, P] bool (True at real tokens); tokens: [N, G] int32 the final
    generation; order: [N, G] int32 the forward pass that revealed each position (a permutation of 0..G-1, block
    by block).
    """

    prompt: np.ndarray
    prompt_mask: np.ndarray
    tokens: np.ndarray
    order: np.ndarray

    def save(self, path: Path) -> None:
        np.savez(path, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def load(cls, path: Path) -> Trajectories:
        with np.load(path) as f:
            return cls(**{name: f[name] for name in ("prompt", "prompt_mask", "tokens", "order")})


def make_trajectories(params: Params, tokenizer, config: SamplerTrainConfig) -> Trajectories:
    """Decodes `config.trajectories` train-split task prompts with the base, one token per forward (entropy order)."""
    from jdlm.decoding import decode
    from jdlm.decoding.entropy import Entropy
    from jdlm.decoding.inputs import pad_prompts
    from jdlm.decoding.schedule import Schedule
    from jdlm.decoding.strategy import Strategy
    from jdlm.eval.runner import encode_prompt
    from jdlm.tasks import TASKS

    total = sum(config.tasks.values())
    counts = {name: round(config.trajectories * share / total) for name, share in config.tasks.items()}
    prompts = []
    for name, n in sorted(counts.items()):
        task = TASKS[name]
        ids = [encode_prompt(tokenizer, task.prompt(e.input)) for e in task.generate("train", n, seed=config.seed)]
        prompts += [p for p in ids if len(p) <= config.prompt_length]
    order = np.random.default_rng(config.seed).permutation(len(prompts))
    prompts = [prompts[i] for i in order]
    strategy = Strategy(schedule=Schedule(gen_length=config.gen_length, block_length=config.block_length,
                                          steps=config.gen_length, temperature=config.temperature), rule=Entropy())
    parts, batch = [], min(config.trajectory_batch, len(prompts))
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        chunk = chunk + [chunk[-1]] * (batch - len(chunk))  # one shape: one compile
        ids, mask = pad_prompts(chunk, tokenizer.pad_id, length=config.prompt_length)
        mask = np.ones(ids.shape, bool) if mask is None else mask
        key = jax.random.fold_in(jax.random.key(config.seed), start)
        out = decode(params, ids, strategy, key=key, prompt_mask=mask)
        n = min(batch, len(prompts) - start)
        parts.append((ids[:n], mask[:n], np.asarray(out.tokens)[:n], np.asarray(out.trace.step)[:n]))
    return Trajectories(*(np.concatenate(column) for column in zip(*parts)))


def sample_batch(data: Trajectories, config: SamplerTrainConfig, step: int) -> dict[str, np.ndarray]:
    """The examples of one step, a pure function of (seed, step): rows [B], states t [B] and unrolls n [B]."""
    rng = np.random.default_rng((config.seed, step))
    W, n_blocks = config.block_length, config.gen_length // config.block_length
    weights = 0.5 ** np.arange(1, config.max_unroll + 1)
    n = rng.choice(np.arange(1, config.max_unroll + 1), size=config.batch_size, p=weights / weights.sum())
    offset = rng.integers(0, W - n)  # s_{t+n} keeps >= 1 masked position in the block: offset + n <= W - 1
    t = rng.integers(0, n_blocks, config.batch_size) * W + offset
    return {"rows": rng.integers(0, len(data.tokens), config.batch_size), "t": t.astype(np.int32),
            "n": n.astype(np.int32)}


def sampler_loss(head: SamplerHead, base: Params, prompt, prompt_mask, tokens, order, t, n, max_unroll: int,
                 block_length: int):
    """Mean KL(base at s_{t+n} || head after n unrolls from s_t) over the block's masked positions, and metrics.

    prompt, prompt_mask: [B, P]; tokens, order: [B, G]; t, n: [B] int32 (see `sample_batch`).
    """
    cfg = base.config
    P = prompt.shape[1]
    W = block_length
    shift = int(cfg.logits_shift)
    valid = jnp.concatenate([prompt_mask, jnp.ones(tokens.shape, bool)], axis=1)  # [B, L]
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)

    def state(revealed):  # [B] tokens revealed -> the sequence [B, L]
        return jnp.concatenate([prompt, jnp.where(order < revealed[:, None], tokens, cfg.mask_id)], axis=1)

    block_start = P + (t // W) * W  # [B]
    rows = jax.vmap(lambda x, s: jax.lax.dynamic_slice_in_dim(x, s, W, axis=0))

    def base_block(seq):  # the base's hidden states and logits for each row's block
        out = forward(base, seq, positions=positions, key_mask=valid, return_hidden=True, logits_slice=(0, 1))
        hidden = rows(out.hidden, block_start - shift)  # [B, W, D], index i predicts block position i
        logits = lm_head(base, hidden).astype(jnp.float32).at[..., cfg.mask_id].set(-jnp.inf)
        return jax.lax.stop_gradient(hidden), jax.lax.stop_gradient(logits)

    hidden, marginal = base_block(state(t))
    _, target = base_block(state(t + n))
    block_positions = rows(positions, block_start)
    dtype = jnp.dtype(hidden.dtype)
    final = jnp.zeros_like(hidden, dtype=jnp.float32)
    for k in range(1, max_unroll + 1):
        hidden = head_hidden(head, base, hidden.astype(dtype), rows(state(t + k), block_start), block_positions)
        final = jnp.where((n == k)[:, None, None], hidden.astype(jnp.float32), final)
    predicted = lm_head(base, final.astype(base.dtype)).astype(jnp.float32).at[..., cfg.mask_id].set(-jnp.inf)
    still_masked = rows(state(t + n), block_start) == cfg.mask_id  # [B, W]
    target_logp = jax.nn.log_softmax(target, axis=-1)

    def kl(logits, selected=True):  # mean over the masked positions of the rows `selected` ([B] bool; all by default)
        logp = jax.nn.log_softmax(logits, axis=-1)
        per_position = jnp.sum(jnp.exp(target_logp) * (target_logp - jnp.where(jnp.isfinite(logp), logp, 0.0)),
                               axis=-1, where=jnp.isfinite(target_logp))
        counted = still_masked & jnp.asarray(selected)[..., None]
        return jnp.sum(jnp.where(counted, per_position, 0.0)) / jnp.maximum(counted.sum(), 1)

    loss = kl(predicted)
    return loss, {"marginal_kl": kl(marginal), "loss_n1": kl(predicted, n == 1), "marginal_kl_n1": kl(marginal, n == 1)}


SamplerState = TrainState  # step, weights, opt_state: the model trainer's state serves the head too


def optimizer(config: SamplerTrainConfig) -> optax.GradientTransformation:
    return warmup_cosine_adamw(config.lr, config.warmup, config.steps, grad_clip=config.grad_clip,
                               weight_decay=config.weight_decay, end_fraction=0.1)


def make_step(config: SamplerTrainConfig, base: Params):
    """The training step: (state, batch arrays) -> (state, metrics), with `optimizer(config)`."""
    step = _compiled_step(config.to_json(), base.config)
    return lambda state, *batch: step(state, base, *batch)


@functools.cache
def _compiled_step(config_json: str, head_config):
    """The jitted step of one configuration, made once per process (a resumed run in the same process reuses its
    compilation). The base model is an argument, not a constant folded into the program."""
    config = SamplerTrainConfig(**json.loads(config_json))
    tx = optimizer(config)
    dtype = jnp.dtype(config.compute_dtype)

    @jax.jit
    def train_step(state: SamplerState, base: Params, prompt, prompt_mask, tokens, order, t, n):
        def loss_fn(weights):
            head = SamplerHead(config=head_config, weights=jax.tree.map(lambda w: w.astype(dtype), weights))
            return sampler_loss(head, base, prompt, prompt_mask, tokens, order, t, n, config.max_unroll,
                                config.block_length)

        return gradient_step(state, loss_fn, tx)

    return train_step


def train_sampler(config: SamplerTrainConfig, run_dir: str | Path, *, base: Params | None = None, tokenizer=None,
                  on_step: Callable[[int, dict], None] | None = None, progress: bool = True) -> SamplerState:
    """Trains (or resumes) a sampler head in `run_dir`; returns the final state. `base`/`tokenizer` default to
    `jdlm.load(config.base)` (float32 weights unless compute_dtype is bfloat16).

    Writes run_dir/sampler_config.json, trajectories.npz (the base's decodes, made once), checkpoints/ (every
    `save_every` steps, at the end and on Ctrl-C), metrics.jsonl; rerunning resumes from the latest checkpoint.
    Data parallel over every visible device when they divide `batch_size` (the model trainer's `data_parallel`):
    the loss is a mean over the batch, so the result does not depend on the number of devices.
    """
    import orbax.checkpoint as ocp

    from jdlm.training.trainer import _drop_metrics_after, _restore

    run_dir = claim_run_dir(run_dir, "sampler_config.json", config.to_json())
    if base is None:
        import jdlm

        base, tokenizer = jdlm.load(config.base, jnp.dtype(config.compute_dtype))
    path = run_dir / "trajectories.npz"
    if path.exists():
        data = Trajectories.load(path)
    else:
        t0 = time.time()
        data = make_trajectories(base, tokenizer, config)
        write_atomically(path, data.save)
        print(f"data: {len(data.tokens)} trajectories of {config.gen_length} tokens in {time.time() - t0:.0f}s",
              flush=True)

    tx = optimizer(config)
    weights = init_head(base.config, jax.random.key(config.seed)).weights
    replicated, split_batch = data_parallel(config.batch_size)  # every visible device, the batch split over them
    base = jax.device_put(base, replicated)
    state = jax.device_put(SamplerState(step=jnp.int32(0), weights=weights, opt_state=tx.init(weights)), replicated)
    step_fn = make_step(config, base)
    options = ocp.CheckpointManagerOptions(max_to_keep=2, save_interval_steps=1)
    with ocp.CheckpointManager(run_dir / "checkpoints", options=options) as manager:
        state = _restore(manager, state, run_dir)
        start = int(state.step)
        _drop_metrics_after(run_dir / "metrics.jsonl", start)
        t0, window = time.time(), []
        try:
            with open(run_dir / "metrics.jsonl", "a") as log:
                for step in range(start, config.steps):
                    b = sample_batch(data, config, step)
                    r = b["rows"]
                    batch = jax.device_put((data.prompt[r], data.prompt_mask[r], data.tokens[r], data.order[r],
                                            b["t"], b["n"]), split_batch)
                    state, metrics = step_fn(state, *batch)
                    window.append(metrics)
                    done = step + 1
                    if done % config.log_every == 0 or done == config.steps:  # means over the steps since the last
                        m = {k: float(np.mean([float(w[k]) for w in window])) for k in metrics}
                        window = []
                        m.update(step=done, elapsed_s=round(time.time() - t0, 1))
                        log.write(json.dumps(m) + "\n")
                        log.flush()
                        if progress:
                            eta = (time.time() - t0) / (done - start) * (config.steps - done)
                            print(f"step {done}/{config.steps} loss {m['loss']:.4f} (marginals "
                                  f"{m['marginal_kl']:.4f}) grad {m['grad_norm']:.2f} eta {eta / 60:.1f} min",
                                  file=sys.stdout, flush=True)
                        if on_step is not None:
                            on_step(done, m)
                    if done % config.save_every == 0:
                        manager.save(done, args=ocp.args.StandardSave(state))
        except KeyboardInterrupt:
            print(f"interrupted: saving step {int(state.step)}; rerun the same command to resume", flush=True)
            manager.save(int(state.step), args=ocp.args.StandardSave(state), force=True)
            manager.wait_until_finished()
            raise
        if manager.latest_step() != int(state.step):
            manager.save(int(state.step), args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()
    return state


def export_head(config: SamplerTrainConfig, state: SamplerState, base: Params, dst: str | Path) -> Path:
    """Writes the trained head (`load_head` reads it), with the base's fingerprint, the training config and steps
    in head.json."""
    head = SamplerHead(config=base.config, weights=state.weights)
    return save_head(dst, head, extra={"training": json.loads(config.to_json()), "steps": int(state.step)}, base=base)


def plot_sampler_loss(run_dir: str | Path, path: str | Path) -> None:
    """Loss curve (PNG) from `run_dir/metrics.jsonl`: the head's KL and the marginals' (no head) on the same
    batches. Raises PlotUnavailable without matplotlib."""
    from jdlm.errors import PlotUnavailable

    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable('matplotlib is not installed (pip install "jdlm[plot]")') from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in rows], label="KL(base || head)")
    ax.plot(steps, [r["marginal_kl"] for r in rows], label="KL(base || marginals), no head", alpha=0.7)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"sampler head: {Path(run_dir).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
