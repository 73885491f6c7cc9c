"""Training data for the small models: a tokenised pool of task examples and deterministic batches from it."""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
from pathlib import Path

import numpy as np

from jdlm.tasks import TASKS, Example

CHUNK = 20_000  # examples per generation job; fewer than one chunk in all are generated in this process


@dataclasses.dataclass(frozen=True)
class Pool:
    """Tokenised examples, each laid out as `prompt ‖ answer ‖ EOS…` in a fixed-length row.

    tokens: [N, T] int32; prompt_len: [N] int32 (the answer starts there); answer_len: [N] int32 (answer tokens
    plus the first EOS); task: [N] int32 index into `task_names`.
    """

    tokens: np.ndarray
    prompt_len: np.ndarray
    answer_len: np.ndarray
    task: np.ndarray
    task_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    @functools.cached_property
    def rows_by_task(self) -> list[np.ndarray]:
        """Row indices of each task."""
        return [np.flatnonzero(self.task == t) for t in range(len(self.task_names))]

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, tokens=self.tokens, prompt_len=self.prompt_len, answer_len=self.answer_len,
                            task=self.task, task_names=np.array(self.task_names))

    @classmethod
    def load(cls, path: str | Path) -> Pool:
        d = np.load(path)
        return cls(d["tokens"], d["prompt_len"], d["answer_len"], d["task"], tuple(str(n) for n in d["task_names"]))


def _generate(args) -> list[Example]:
    name, n, seed, difficulty = args
    return TASKS[name].generate("train", n, seed=seed, **difficulty)


def generate_examples(counts: dict[str, int], seed: int = 0, workers: int | None = None,
                      difficulty: dict[str, dict] | None = None) -> dict[str, list[Example]]:
    """`counts[task]` train-split examples per task, generated in chunks of CHUNK (deterministic for a seed).

    Chunks run in `workers` spawned processes (default one per core), never forked: this process has JAX's threads,
    and a fork copies their locks mid-use. `difficulty[task]` holds generator settings; JSON lists are read as
    (min, max) ranges.
    """
    settings = {name: {k: tuple(v) if isinstance(v, list) else v for k, v in (difficulty or {}).get(name, {}).items()}
                for name in counts}
    jobs = []
    for t, (name, n) in enumerate(sorted(counts.items())):
        for c in range(0, n, CHUNK):
            jobs.append((name, min(CHUNK, n - c), seed * 1_000_003 + t * 10_007 + c // CHUNK, settings[name]))
    if sum(counts.values()) <= CHUNK or workers == 1:
        parts = list(map(_generate, jobs))  # starting processes would cost more than the work
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_generate, jobs)
    out: dict[str, list[Example]] = {name: [] for name in counts}
    for (name, *_), part in zip(jobs, parts):
        out[name].extend(part)
    return out


def build_pool(tokenizer, examples: dict[str, list[Example]], length: int) -> Pool:
    """Tokenises examples into rows of `length`; rows that do not fit are dropped (and counted in a warning)."""
    names = tuple(sorted(examples))
    prompt_ids, answer_ids, tasks = [], [], []
    for t, name in enumerate(names):
        exs = examples[name]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": TASKS[name].prompt(e.input)}])
                 for e in exs]
        prompt_ids += tokenizer.encode_batch(texts)
        answer_ids += [a + [tokenizer.eos_id] for a in tokenizer.encode_batch([e.output for e in exs])]
        tasks += [t] * len(exs)
    prompt_len = np.array([len(p) for p in prompt_ids], np.int32)
    answer_len = np.array([len(a) for a in answer_ids], np.int32)
    fits = prompt_len + answer_len <= length
    if not fits.all():
        print(f"warning: {int((~fits).sum())} examples longer than {length} tokens were dropped", flush=True)
    keep = np.flatnonzero(fits)
    rows = np.full((len(keep), length), tokenizer.eos_id, np.int32)
    for r, i in enumerate(keep):
        rows[r, : prompt_len[i]] = prompt_ids[i]
        rows[r, prompt_len[i]: prompt_len[i] + answer_len[i]] = answer_ids[i]
    return Pool(rows, prompt_len[keep], answer_len[keep], np.asarray(tasks, np.int32)[keep], names)


def batch_indices(pool: Pool, weights: dict[str, float], batch: int, step: int, seed: int) -> np.ndarray:
    """Row indices of the batch for `step`: tasks drawn by `weights`, rows uniformly within a task.

    A pure function of (seed, step), so a resumed run sees exactly the batches an uninterrupted one would.
    """
    rng = np.random.default_rng([seed, step])
    names = pool.task_names
    p = np.array([weights.get(n, 0.0) for n in names], np.float64)
    p /= p.sum()
    chosen = rng.choice(len(names), size=batch, p=p)
    by_task = pool.rows_by_task
    return np.array([by_task[t][rng.integers(len(by_task[t]))] for t in chosen], np.int64)
