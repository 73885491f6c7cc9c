"""Evaluation harness: accuracy against NFE for every decoding strategy on the task suite (and HumanEval).

    from jdlm import eval as E
    params, tokenizer = jdlm.load("tiny")
    reports = E.sweep(params, tokenizer, ["sudoku", "countdown"],
                      [E.EvalSpec(rule="low_confidence", tokens_per_step=k) for k in (1, 2, 4)]
                      + [E.EvalSpec(rule=f"threshold:{t}", cache="dual") for t in (0.7, 0.9)])
    print(E.format_table(reports)); E.write_json(reports, "eval.json"); E.plot_pareto(reports, "pareto.png")

`read_data(path)` reads a file of examples in our jsonl or a public format (countdown nums/target, Kaggle sudoku
CSV, GSM8K) for `evaluate(..., data=...)`. The code task and HumanEval run model-written programs (in `jdlm.sandbox`), only with `allow_code_execution=True` or
JDLM_RUN_UNSAFE_CODE=1. The lm-evaluation-harness model lives in `jdlm.eval.lm_eval_adapter` (imported on demand: it
needs lm-eval).
"""

from jdlm.eval.formats import DataFile, read_data
from jdlm.eval.humaneval import check_completions, evaluate_humaneval, load_problems
from jdlm.eval.plot import pareto_front, plot_pareto
from jdlm.eval.report import EvalReport, Record, format_table, read_json, write_json, write_tables
from jdlm.eval.runner import DEFAULT_EXAMPLES, encode_prompt, evaluate, generate, score_tokens, sweep
from jdlm.eval.settings import TASK_SETTINGS, TaskSettings, is_task_tokenizer, task_settings
from jdlm.eval.spec import EvalSpec, describe_strategy, parse_spec

__all__ = [
    # what to evaluate
    "EvalSpec", "parse_spec", "describe_strategy",
    "TaskSettings", "TASK_SETTINGS", "task_settings", "is_task_tokenizer",
    # files of examples in public formats (jdlm eval --data)
    "read_data", "DataFile",
    # running
    "evaluate", "sweep", "evaluate_humaneval", "generate", "encode_prompt", "score_tokens", "DEFAULT_EXAMPLES",
    "load_problems", "check_completions",
    # results
    "EvalReport", "Record", "write_json", "write_tables", "read_json", "format_table", "plot_pareto", "pareto_front",
]
