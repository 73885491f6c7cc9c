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
        """Uncompressed: compressing a pool of millions of rows took minutes of the training machine's time."""
        np.savez(path, tokens=self.tokens, prompt_len=self.prompt_len, answer_len=self.answer_len,
                            task=self.task, task_names=np.array(self.task_names))

    @classmethod
    def load(cls, path: str | Path) -> Pool:
        d = np.load(path)
        return cls(d["tokens"], d["prompt_len"], d["answer_len"], d["task"], tuple(str(n) for n in d["task_names"]))


def _jobs(counts: dict[str, int], seed: int, difficulty: dict[str, dict] | None) -> list[tuple]:
    """(task, n, chunk seed, generator settings) per chunk of CHUNK examples; JSON lists read as (min, max)."""
    settings = {name: {k: tuple(v) if isinstance(v, list) else v for k, v in (difficulty or {}).get(name, {}).items()}
                for name in counts}
    jobs = []
    for t, (name, n) in enumerate(sorted(counts.items())):
        for c in range(0, n, CHUNK):
            jobs.append((name, min(CHUNK, n - c), seed * 1_000_003 + t * 10_007 + c // CHUNK, settings[name]))
    return jobs


def _run_jobs(fn, jobs: list, workers: int | None, total: int) -> list:
    """fn over jobs, in `workers` spawned processes (default one per core), never forked: this process has JAX's
    threads, and a fork copies their locks mid-use. In this process when there is little work or workers == 1."""
    if total <= CHUNK or workers == 1:
        return list(map(fn, jobs))  # starting processes would cost more than the work
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(fn, jobs)


def _generate(job) -> list[Example]:
    name, n, seed, difficulty = job
    return TASKS[name].generate("train", n, seed=seed, **difficulty)


def generate_examples(counts: dict[str, int], seed: int = 0, workers: int | None = None,
                      difficulty: dict[str, dict] | None = None) -> dict[str, list[Example]]:
    """`counts[task]` train-split examples per task, generated in chunks of CHUNK (deterministic for a seed).

    `difficulty[task]` holds generator settings; JSON lists are read as (min, max) ranges.
    """
    jobs = _jobs(counts, seed, difficulty)
    parts = _run_jobs(_generate, jobs, workers, sum(counts.values()))
    out: dict[str, list[Example]] = {name: [] for name in counts}
    for (name, *_), part in zip(jobs, parts):
        out[name].extend(part)
    return out


def build_pool(tokenizer, examples: dict[str, list[Example]], length: int) -> Pool:
    """Tokenises examples into rows of `length`; rows that do not fit are dropped (see `dropped`)."""
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
    keep = np.flatnonzero(prompt_len + answer_len <= length)
    rows = np.full((len(keep), length), tokenizer.eos_id, np.int32)
    for r, i in enumerate(keep):
        rows[r, : prompt_len[i]] = prompt_ids[i]
        rows[r, prompt_len[i]: prompt_len[i] + answer_len[i]] = answer_ids[i]
    return Pool(rows, prompt_len[keep], answer_len[keep], np.asarray(tasks, np.int32)[keep], names)


@functools.cache
def _tokenizer(directory: str, config):
    from jdlm.tokenizer import Tokenizer

    return Tokenizer.from_dir(directory, config)


def _generate_rows(job) -> Pool:
    *generation, directory, config, length = job
    return build_pool(_tokenizer(directory, config), {generation[0]: _generate(generation)}, length)


def generate_pool(counts: dict[str, int], tokenizer_dir: str | Path, config, length: int, *, seed: int = 0,
                  workers: int | None = None, difficulty: dict[str, dict] | None = None) -> Pool:
    """The tokenised pool of `generate_examples(counts, seed, ...)` in rows of `length`, each chunk generated and
    tokenised in its worker process (the tokenizer of `tokenizer_dir` for a model of `config`).

    Rows are those `build_pool` makes of the same examples, in the same order. Prints how many examples did not
    fit `length` and were dropped.
    """
    jobs = [job + (str(tokenizer_dir), config, length) for job in _jobs(counts, seed, difficulty)]
    parts = _run_jobs(_generate_rows, jobs, workers, sum(counts.values()))
    names = tuple(sorted(counts))
    task_index = [names.index(part.task_names[0]) for part in parts]
    dropped = sum(counts.values()) - sum(len(p) for p in parts)
    if dropped:
        print(f"warning: {dropped} examples longer than {length} tokens were dropped", flush=True)
    return Pool(np.concatenate([p.tokens for p in parts]), np.concatenate([p.prompt_len for p in parts]),
                np.concatenate([p.answer_len for p in parts]),
                np.concatenate([np.full(len(p), t, np.int32) for p, t in zip(parts, task_index)]), names)


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
