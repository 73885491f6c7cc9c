"""`evaluate` and `sweep`: decode a task's examples in batches of a few fixed shapes, score them, time them."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import jax
import numpy as np

from jdlm import sandbox
from jdlm.decoding.inputs import pad_prompts
from jdlm.decoding.loop import decode
from jdlm.decoding.strategy import Strategy
from jdlm.eval.formats import DataFile, read_data
from jdlm.eval.report import EvalReport, Record
from jdlm.eval.settings import TaskSettings, prompt_bucket, task_settings
from jdlm.eval.spec import EvalSpec, describe_strategy, parse_spec
from jdlm.model import Params
from jdlm.tasks import Example, Task, get_task

DEFAULT_EXAMPLES = 500  # eval-split examples generated when none are given


# ---------------------------------------------------------------------------------------------- decoding in batches

@dataclasses.dataclass(frozen=True)
class Generation:
    """Decoded rows of a list of prompts. N prompts, G = gen_length.

    tokens: [N, G] int32; nfe: [N] int32; lengths: [N] generated tokens up to and including the first end token
    (G when there is none); decode_s / compile_s: wall time of the steady / compiling batches; timed_tokens: the
    sum of `lengths` over the steady batches (the numerator of tokens/s).
    """

    tokens: np.ndarray
    nfe: np.ndarray
    lengths: np.ndarray
    decode_s: float
    compile_s: float
    timed_tokens: int
    guide_nfe: np.ndarray | None = None  # [N] forward passes of the AR guide, None unguided

    @property
    def tokens_per_s(self) -> float:
        return self.timed_tokens / self.decode_s if self.decode_s > 0 else 0.0


def answer_lengths(tokens: np.ndarray, config) -> np.ndarray:
    """Tokens up to and including the first EOS / end-of-turn per row of tokens [N, G]; G where none: [N]."""
    end = np.isin(tokens, config.end_ids)
    return np.where(end.any(-1), end.argmax(-1) + 1, tokens.shape[1])


def row_bucket(rows: int, batch_size: int) -> int:
    """Rows to decode for a batch of `rows` real prompts: the next power of two >= rows, at most batch_size."""
    return min(batch_size, 1 << (rows - 1).bit_length())


def generate(params: Params, prompts: Sequence[Sequence[int]], strategy: Strategy, *, batch_size: int = 16,
             prompt_length: int | None = None, key: jax.Array | None = None,
             advance: Callable[[int], None] | None = None, guide: Params | None = None) -> Generation:
    """Decodes N token prompts in batches of `batch_size` rows, padding a short batch only to a bucket of rows.

    Each batch is left-padded to `prompt_length` (None: the bucket of its longest prompt, see `pad_prompts`). When
    all N fit one batch, it is filled with copies of its last prompt up to `row_bucket` rows (3 prompts decode 4
    rows, not `batch_size`); with several batches, the last is filled up to `batch_size`, so that one shape
    compiles (a second, smaller shape would double the compile time of a sweep). The copies are dropped. Example i decodes with the key `fold_in(key, i)`, so results do not depend on the
    batch size or on an example's neighbours. NFE, lengths and tokens/s count real rows only.

    Timing: a batch whose shape has not been seen is compiling, and its wall time (compilation plus one run) goes to
    `compile_s`; every other batch is timed into `decode_s`, blocking on its result. When every batch compiled (a
    single batch, say), the last one is run once more, compiled, to measure `decode_s`.

    Args:
      params: model weights.
      prompts: N token lists (no padding).
      strategy: the decode strategy.
      batch_size: rows per full decode call.
      prompt_length: fixed padded prompt length P, or None for per-batch buckets.
      key: base PRNG key (default `jax.random.key(0)`).
      advance: called with the number of real examples after each batch (progress bars).
      guide: the AR guide's weights, for a strategy with an ARGuide.
    Returns:
      Generation with tokens [N, G], nfe [N], lengths [N] and the timings.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not prompts:
        raise ValueError("no prompts to decode")
    key = jax.random.key(0) if key is None else key
    cfg = params.config
    tokens, nfe, lengths, guide_nfe = [], [], [], []
    seen, decode_s, compile_s, timed_tokens = set(), 0.0, 0.0, 0
    last = None
    # One batch: a small bucket of rows. Several: every batch full, the last one padded, so one shape compiles.
    batch_rows = batch_size if len(prompts) > batch_size else row_bucket(len(prompts), batch_size)
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        real = len(chunk)
        chunk += [chunk[-1]] * (batch_rows - real)
        ids, mask = pad_prompts(chunk, cfg.pad_id, length=prompt_length)
        mask = np.ones(ids.shape, bool) if mask is None else mask  # always a mask: one trace for every batch
        row_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(np.arange(start, start + len(chunk)))
        t0 = time.perf_counter()
        result = jax.block_until_ready(decode(params, ids, strategy, key=row_keys, prompt_mask=mask, guide=guide))
        elapsed = time.perf_counter() - t0
        rows = np.asarray(result.tokens)[:real]
        n_tokens = answer_lengths(rows, cfg)
        if ids.shape in seen:
            decode_s += elapsed
            timed_tokens += int(n_tokens.sum())
        else:
            seen.add(ids.shape)
            compile_s += elapsed
        last = (ids, mask, row_keys, int(n_tokens.sum()))
        tokens.append(rows)
        nfe.append(np.asarray(result.nfe)[:real])
        if result.guide_nfe is not None:
            guide_nfe.append(np.asarray(result.guide_nfe)[:real])
        lengths.append(n_tokens)
        if advance is not None:
            advance(real)
    if decode_s == 0.0:  # nothing was timed compiled: rerun the last batch
        ids, mask, row_keys, n = last
        t0 = time.perf_counter()
        jax.block_until_ready(decode(params, ids, strategy, key=row_keys, prompt_mask=mask, guide=guide))
        decode_s, timed_tokens = time.perf_counter() - t0, n
    return Generation(tokens=np.concatenate(tokens), nfe=np.concatenate(nfe), lengths=np.concatenate(lengths),
                      decode_s=decode_s, compile_s=compile_s, timed_tokens=timed_tokens,
                      guide_nfe=np.concatenate(guide_nfe) if guide_nfe else None)


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, description: str) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar over `total` examples (on stderr); yields its `advance(n)`, or None when disabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


# ---------------------------------------------------------------------------------------------- one task

def encode_prompt(tokenizer, text: str) -> list[int]:
    """The prompt's token ids: chat-wrapped as one user message when the tokenizer has a chat template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.encode_chat([{"role": "user", "content": text}])
    return tokenizer.encode(text)


Scorer = Callable[[Example, str], bool]  # (example, generated text) -> correct


def score_tokens(task: Task, examples: Sequence[Example], tokenizer, tokens: np.ndarray, nfe: Sequence[int],
                 lengths: Sequence[int], scorer: Scorer | None = None) -> list[Record]:
    """Records for generated tokens [N, G]: each row decoded to text (cut at EOS) and scored by `scorer`
    (default: the task's own `score(input, text)`); each keeps its example's reference answer, if any."""
    records = []
    for ex, row, n, length in zip(examples, tokens, nfe, lengths, strict=True):
        text = tokenizer.decode(row)
        records.append(Record(input=ex.input, output=text, correct=_score(task, ex, text, scorer), nfe=int(n),
                              tokens=int(length), reference=ex.output or None))
    return records


def _score(task: Task, example: Example, text: str, scorer: Scorer | None = None) -> bool:
    """The verdict. A scorer that raises scores 0 with a warning: decoding is done, the run goes on."""
    try:
        return bool(scorer(example, text) if scorer else task.score(example.input, text))
    except Exception as e:
        warnings.warn(f"{task.name}: scoring {example.input[:60]!r} raised {type(e).__name__}: {e}; scored 0",
                      stacklevel=2)
        return False


def check_code_allowed(task: Task, allow_code_execution: bool | None) -> None:
    """Raises UsageError for a task whose scoring runs model-written code, unless that was allowed."""
    if getattr(task, "runs_generated_code", False):
        sandbox.check_allowed(f"the {task.name} task", allow_code_execution)


def make_report(*, task: str, spec: EvalSpec, settings: TaskSettings, records: Sequence[Record],
                generation: Generation, prompt_length: int | None, batch_size: int,
                name: str | None = None, strategy: Strategy | None = None,
                data: DataFile | None = None) -> EvalReport:
    n = len(records)
    return EvalReport(
        task=task, strategy=name or spec.name, family=spec.family, rule=spec.rule_name, cache=spec.cache,
        tokens_per_step=spec.tokens_per_step, temperature=spec.temperature, n=n,
        accuracy=sum(r.correct for r in records) / n, mean_nfe=float(np.mean([r.nfe for r in records])),
        tokens_per_s=generation.tokens_per_s, decode_s=generation.decode_s, compile_s=generation.compile_s,
        gen_length=settings.gen_length, block_length=settings.block_length, prompt_length=prompt_length,
        batch_size=batch_size, device=jax.devices()[0].device_kind, records=tuple(records),
        strategy_config=None if strategy is None else strategy.to_dict(),
        data=None if data is None else {"path": data.path, "format": data.format},
        mean_guide_nfe=None if generation.guide_nfe is None else float(np.mean(generation.guide_nfe)))


def plan(spec: EvalSpec | Strategy | str, settings: TaskSettings) -> tuple[EvalSpec, str, Strategy, TaskSettings]:
    """(spec, name, strategy, settings) for a spec, a spec name or a ready-made Strategy.

    A Strategy is decoded as given except that `stop_at_eos` is turned on, and its own gen_length and block_length
    replace the task's (the prompt bucket stays); its report is described by `describe_strategy`.
    """
    if isinstance(spec, Strategy):
        sched = spec.schedule
        settings = TaskSettings(gen_length=sched.gen_length, block_length=sched.block_length,
                                prompt_length=settings.prompt_length)
        described, name = describe_strategy(spec)
        return described, name, spec.replace(stop_at_eos=True), settings
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if not isinstance(spec, EvalSpec):
        raise TypeError(f"spec must be an EvalSpec, a spec name or a jdlm.Strategy, got {type(spec).__name__}")
    return spec, spec.name, spec.strategy(settings), settings


def _examples(task: Task, examples, data: DataFile | None, limit) -> list[Example]:
    if examples is not None and data is not None:
        raise ValueError("give examples or data (a file of examples), not both")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive or None, got {limit}")
    if data is not None:
        data.check_task(task.name)
        examples = data.examples
    elif examples is None:
        examples = task.generate("eval", limit or DEFAULT_EXAMPLES, seed=0)
    examples = list(examples)[:limit]
    if not examples:
        raise ValueError(f"no examples to evaluate for {task.name}")
    return examples


def evaluate(params: Params, tokenizer, task: Task | str, spec: EvalSpec | Strategy | str, *,
             examples: Sequence[Example] | None = None, limit: int | None = None, batch_size: int = 16,
             data: str | Path | DataFile | None = None, progress: bool = True, key: jax.Array | None = None,
             settings: TaskSettings | None = None, allow_code_execution: bool | None = None,
             scorer: Scorer | None = None, guide: Params | None = None) -> EvalReport:
    """Decodes and scores one task with one strategy.

    Args:
      params, tokenizer: the model (`jdlm.load(path)`).
      task: a Task or its name in `jdlm.tasks.TASKS`.
      spec: an EvalSpec, or its name as `parse_spec` reads it ("threshold:0.9 dual"), or a ready-made
        `jdlm.Strategy` (decoded with its own lengths and stop_at_eos on; see `plan`).
      examples: the examples; default the task's eval split (seed 0), `limit` or 500 of them.
      limit: evaluate only the first `limit` examples.
      batch_size: rows per decode call (a single short batch decodes only `row_bucket` rows).
      data: a file of examples instead of `examples`, in any format `jdlm.eval.formats.read_data` reads (our jsonl,
        countdown nums/target, sudoku CSV or jsonl, GSM8K), or what it read; its format must suit `task`, and a
        format with its own scorer (GSM8K: the final answer) is scored by it.
      progress: show a progress bar over examples.
      key: PRNG key for sampled strategies (default `jax.random.key(0)`); example i uses `fold_in(key, i)`.
      settings: decode shapes; default `task_settings(task, tokenizer)`.
      allow_code_execution: the code task runs model-written programs (in `jdlm.sandbox`): only when this is True,
        or None and JDLM_RUN_UNSAFE_CODE=1; otherwise it raises UsageError before decoding.
      scorer: (example, generated text) -> correct, instead of the task's scorer (and the data file's).
      guide: a causal model's weights on the same tokenizer (`jdlm.load("tiny-ar")`): the strategy is verified by it
        (an ARGuide is added when it has none, and " +guide" ends the name).
    Returns:
      EvalReport with accuracy, mean NFE (and the guide's), tokens/s and one Record per example (its generated
      answer and its reference).
    """
    task = get_task(task) if isinstance(task, str) else task
    check_code_allowed(task, allow_code_execution)
    spec, name, strategy, settings = plan(spec, settings or task_settings(task, tokenizer))
    data = read_data(data) if isinstance(data, (str, Path)) else data
    if guide is not None and strategy.guide is None:
        from jdlm.decoding.ar_guide import ARGuide

        strategy, name = strategy.replace(guide=ARGuide()), f"{name} +guide"
    examples = _examples(task, examples, data, limit)
    scorer = scorer or (data.scorer if data is not None else None)
    prompts = [encode_prompt(tokenizer, task.prompt(ex.input)) for ex in examples]
    P = prompt_bucket(settings, max(map(len, prompts)))
    with progress_bar(progress, len(examples), f"{task.name} {name}") as advance:
        gen = generate(params, prompts, strategy, batch_size=batch_size, prompt_length=P, key=key, advance=advance,
                       guide=guide)
    records = score_tokens(task, examples, tokenizer, gen.tokens, gen.nfe, gen.lengths, scorer)
    return make_report(task=task.name, spec=spec, settings=settings, records=records, generation=gen,
                       prompt_length=P, batch_size=batch_size, name=name, strategy=strategy, data=data)


def sweep(params: Params, tokenizer, tasks: Sequence[Task | str], specs: Sequence[EvalSpec | Strategy | str], *,
          limit: int | None = None, batch_size: int = 16, progress: bool = True, key: jax.Array | None = None,
          examples: dict[str, Sequence[Example]] | None = None,
          allow_code_execution: bool | None = None, guide: Params | None = None) -> list[EvalReport]:
    """Every spec on every task (task-major order); each task's examples are drawn once and shared by all specs.

    Every (task, spec) pair is checked before anything is decoded, so a spec that does not fit a task's block
    length fails at once, and so is consent for tasks that run code (`allow_code_execution`, as in `evaluate`).
    `examples` optionally maps task names to their examples; `guide` as in `evaluate`.
    """
    tasks = [get_task(t) if isinstance(t, str) else t for t in tasks]
    for t in tasks:
        check_code_allowed(t, allow_code_execution)
    specs = [parse_spec(s) if isinstance(s, str) else s for s in specs]
    settings = {t.name: task_settings(t, tokenizer) for t in tasks}
    for t in tasks:
        for s in specs:
            plan(s, settings[t.name])
    reports = []
    for t in tasks:
        exs = _examples(t, (examples or {}).get(t.name), None, limit)
        for s in specs:
            reports.append(evaluate(params, tokenizer, t, s, examples=exs, batch_size=batch_size,
                                    progress=progress, key=key, settings=settings[t.name],
                                    allow_code_execution=allow_code_execution, guide=guide))
    return reports
