"""Tests for jdlm.tasks: determinism, split purity, scorers (own outputs pass, corruptions fail), difficulty, jsonl."""

import json
import re
import time

import pytest

from jdlm.tasks import TASKS, Example, get_task, load_jsonl, save_jsonl, split_of
from jdlm.tasks import arithmetic, code, countdown, sudoku

NAMES = sorted(TASKS)
GARBAGE = ["", " ", "\n\n", "####", "0", "-1", "abc", "1234\n" * 4, "1+1=2", "def f(:", "\x00\xff", "9" * 5000,
           "#### 99999999999999999999999", ",,,", "1,2,3"]


# ---------------------------------------------------------------------------------------------- every task

@pytest.mark.parametrize("name", NAMES)
def test_generate_is_deterministic_and_seeded(name):
    task = TASKS[name]
    assert task.generate("train", 20, seed=0) == task.generate("train", 20, seed=0)
    assert task.generate("train", 20, seed=0) != task.generate("train", 20, seed=1)
    assert task.generate("train", 5, seed=0) == task.generate("train", 20, seed=0)[:5]


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_disjoint_and_deduplicated(name):
    task = TASKS[name]
    train, eval_ = task.generate("train", 300), task.generate("eval", 40)
    train_inputs, eval_inputs = {e.input for e in train}, {e.input for e in eval_}
    assert len(train_inputs) == 300 and len(eval_inputs) == 40
    assert not train_inputs & eval_inputs
    assert {split_of(x) for x in train_inputs} == {"train"} and {split_of(x) for x in eval_inputs} == {"eval"}


@pytest.mark.parametrize("name", NAMES)
def test_own_outputs_score_true_and_fit_the_length_hint(name):
    task = TASKS[name]
    examples = task.generate("train", 30, seed=7) + task.generate("eval", 10, seed=7)
    for e in examples:
        assert task.score(e.input, e.output), e
        assert task.score(e.input, "  " + e.output + "\n"), "surrounding whitespace is tolerated"
        assert len(e.output) <= task.max_output_chars


@pytest.mark.parametrize("name", NAMES)
def test_prompt_is_a_tag_line_then_the_input(name):
    task = TASKS[name]
    e = task.generate("train", 1)[0]
    assert task.prompt(e.input) == f"{name}:\n{e.input}\n"
    assert (task.prompt(e.input) + e.output).isascii()


@pytest.mark.parametrize("name", NAMES)
def test_malformed_text_scores_false_without_raising(name):
    task = TASKS[name]
    e = task.generate("train", 1)[0]
    for junk in GARBAGE:
        assert task.score(e.input, junk) is False
        assert task.score(junk, e.output) is False


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_are_reported(name):
    task = TASKS[name]
    with pytest.raises(ValueError, match="split"):
        task.generate("test", 1)
    with pytest.raises(ValueError, match="no difficulty knob"):
        task.generate("train", 1, hardness=3)


def test_registry():
    assert set(TASKS) == {"sudoku", "countdown", "arithmetic", "code", "pycode"}
    assert get_task("sudoku") is TASKS["sudoku"]
    with pytest.raises(ValueError, match="arithmetic, code, countdown, pycode, sudoku"):
        get_task("chess")


# ---------------------------------------------------------------------------------------------- sudoku

@pytest.mark.parametrize("blanks", [4, (6, 8), 12], ids=["4", "6-8", "12"])
def test_sudoku_blanks_and_uniqueness(blanks):
    lo, hi = (blanks, blanks) if isinstance(blanks, int) else blanks
    for e in TASKS["sudoku"].generate("train", 30, blanks=blanks):
        grid = [int(ch) for ch in e.input.replace("\n", "")]
        assert lo <= grid.count(0) <= hi
        assert sudoku.count_solutions(grid) == 1


def test_sudoku_blanks_default_range_is_covered():
    counts = {e.input.count("0") for e in TASKS["sudoku"].generate("train", 300)}
    assert counts == set(range(4, 13))


@pytest.mark.parametrize("cell", [0, 5, 10, 15])
def test_sudoku_one_changed_digit_fails(cell):
    task = TASKS["sudoku"]
    for e in task.generate("train", 10, blanks=(8, 12)):
        flat = list(e.output.replace("\n", ""))
        flat[cell] = str(int(flat[cell]) % 4 + 1)
        corrupted = "\n".join("".join(flat[4 * r:4 * r + 4]) for r in range(4))
        assert not task.score(e.input, corrupted)


def test_sudoku_scores_validity_not_string_match():
    task = TASKS["sudoku"]
    empty = "0000\n" * 3 + "0000"
    assert task.score(empty, "1234\n3412\n2143\n4321") and task.score(empty, "4321\n2143\n3412\n1234")
    assert not task.score(empty, "1234\n2341\n3412\n4123")  # rows and columns fine, boxes not
    assert not task.score("1000\n" + "0000\n" * 2 + "0000", "2143\n3412\n1234\n4321")  # ignores a given


@pytest.mark.parametrize("blanks", [13, -1, (5, 4), (1, 2, 3)], ids=["13", "-1", "reversed", "triple"])
def test_sudoku_rejects_bad_blanks(blanks):
    with pytest.raises(ValueError, match="blanks"):
        sudoku.Sudoku(blanks=blanks)


# ---------------------------------------------------------------------------------------------- countdown

@pytest.mark.parametrize("n_sources", [3, 4, 5, (2, 6)], ids=["3", "4", "5", "2-6"])
def test_countdown_difficulty(n_sources):
    lo, hi = (n_sources, n_sources) if isinstance(n_sources, int) else n_sources
    for e in TASKS["countdown"].generate("train", 50, n_sources=n_sources):
        numbers = [int(x) for x in e.input.split(",")]
        assert lo <= len(numbers) - 1 <= hi and all(1 <= x <= countdown.MAX_SOURCE for x in numbers[:-1])
        assert len(e.output.split(",")) == len(numbers) - 2
        assert e.output.endswith(f"={numbers[-1]}")


@pytest.mark.parametrize("output, ok", [
    ("8/2=4,4*5=20", True),
    ("8*5=40,40/2=20", True),  # another valid solution
    ("5*8=40,40/2=20", True),
    ("8/2=4,4*5=21", False),  # wrong arithmetic
    ("8*2=16,16+5=21", False),  # reaches the wrong target
    ("2*5=10,10*2=20", False),  # reuses a source, leaves 8 unused
    ("8/2=4,4*4=16", False),  # reuses an intermediate result
    ("5/2=2,8+2=10", False),  # division not exact
    ("8-8=0,0+5=5", False),  # zero result
    ("2-8=-6,5*4=20", False),  # negative
    ("8/2=4", False),  # too few equations
    ("8/2=4,4*5=20,20*1=20", False),  # too many equations
    ("8 / 2 = 4, 4 * 5 = 20", False),  # inner spaces are not the format
    ("8/2=04,4*5=20", False),  # leading zero
], ids=["valid", "other-valid", "swapped-operands", "bad-arithmetic", "wrong-target", "reused-source",
        "reused-result", "inexact-division", "zero", "negative", "too-few", "too-many", "spaces", "leading-zero"])
def test_countdown_scorer_rules(output, ok):
    assert TASKS["countdown"].score("8,2,5,20", output) is ok


def test_countdown_result_cap():
    task = TASKS["countdown"]
    assert task.score("99,99,99,970299", "99*99=9801,9801*99=970299") is False  # results above 9999
    assert task.score("99,99,1,9800", "99*99=9801,9801-1=9800") is True


# ---------------------------------------------------------------------------------------------- arithmetic

EQUATION = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


@pytest.mark.parametrize("steps", [2, 3, 4, (2, 4)], ids=["2", "3", "4", "2-4"])
def test_arithmetic_steps_and_number_sizes(steps):
    lo, hi = (steps, steps) if isinstance(steps, int) else steps
    for e in TASKS["arithmetic"].generate("train", 60, steps=steps):
        equations = EQUATION.findall(e.output)
        assert lo <= len(equations) <= hi
        assert all(int(n) <= 100 for n in re.findall(r"\d+", e.input))
        assert all(0 <= int(r) <= arithmetic.MAX_VALUE for *_, r in equations)
        assert e.output.endswith(f"\n#### {equations[-1][3]}")


def test_arithmetic_has_enough_templates():
    assert len(arithmetic.PROBLEMS) >= 8
    assert {len(p.steps) for p in arithmetic.PROBLEMS} == {2, 3, 4}


def test_arithmetic_scores_only_the_final_number():
    task = TASKS["arithmetic"]
    for e in task.generate("train", 20):
        answer = int(e.output.rsplit("#### ", 1)[1])
        assert task.score(e.input, f"#### {answer}")
        assert task.score(e.input, f"anything\n####{answer} ")
        assert not task.score(e.input, e.output.replace(f"#### {answer}", f"#### {answer + 1}"))
        assert not task.score(e.input, e.output.replace(f"#### {answer}", f"#### {answer}.0"))
        assert not task.score(e.input, e.output.replace("#### ", ""))
        assert not task.score(e.input + " Why?", e.output)  # an unknown question


# ---------------------------------------------------------------------------------------------- code

@pytest.mark.parametrize("function", sorted(code.FUNCTIONS))
def test_code_each_template_passes_its_own_tests(function):
    task = TASKS["code"]
    for e in task.generate("train", 2, functions=(function,)):
        assert code.FUNCTIONS[function].describe.parse(e.input) is not None
        assert task.score(e.input, e.output)


def test_code_has_enough_templates_and_short_outputs():
    assert len(code.FUNCTIONS) >= 8
    assert TASKS["code"].max_output_chars <= 120


@pytest.mark.parametrize("output", [
    "def add(x):\n    return x + 4",  # wrong answer
    "def add(x):\n    return float(x + 3)",  # right value, wrong type
    "def plus(x):\n    return x + 3",  # wrong name
    "def add(x):\n    return x +",  # syntax error
    "import os\nos._exit(0)",  # exits early with status 0
], ids=["wrong", "wrong-type", "wrong-name", "syntax", "early-exit"])  # cheats and escapes: tests/test_sandbox.py
def test_code_bad_candidates_fail(output):
    assert TASKS["code"].score("add(x): return x plus 3", output) is False


def test_code_candidate_output_is_ignored():
    assert TASKS["code"].score("add(x): return x plus 3", "def add(x):\n    print('noise')\n    return x + 3")


def test_code_infinite_loop_times_out():
    start = time.monotonic()
    assert TASKS["code"].score("add(x): return x plus 3", "def add(x):\n    while True:\n        pass") is False
    assert time.monotonic() - start < code.TIMEOUT_S + 3


def test_code_input_outside_the_template_ranges_scores_false_without_raising():
    # from --data: the reference itself divides by zero
    assert TASKS["code"].score("sum_div(xs): return the sum of the numbers in xs divisible by 0",
                               "def sum_div(xs):\n    return 0") is False


def test_code_rejects_unknown_functions_and_exhausted_spaces():
    with pytest.raises(ValueError, match="functions"):
        code.Code(functions=("fizzbuzz",))
    with pytest.raises(ValueError, match="distinct"):  # reverse has 4 names x 3 argument names = 12 inputs
        TASKS["code"].generate("train", 50, functions="reverse")


# ---------------------------------------------------------------------------------------------- jsonl

def test_jsonl_round_trip(tmp_path):
    examples = [e for name in NAMES for e in TASKS[name].generate("eval", 3)] + [Example(input="é", output="ü")]
    path = tmp_path / "data.jsonl"
    save_jsonl(path, examples)
    assert load_jsonl(path) == examples
    assert load_jsonl(str(path)) == examples


def test_jsonl_skips_blank_lines_and_ignores_extra_keys(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"input": "a", "output": "b", "id": 7}\n\n')
    assert load_jsonl(path) == [Example(input="a", output="b")]


@pytest.mark.parametrize("text, message", [
    ('{"input": "a", "output": "b"}\n{not json}\n', r"data.jsonl:2: not valid JSON"),
    ('{"input": "a"}\n', r"data.jsonl:1: key 'output' is missing"),
    ('{"output": "b"}\n', r"data.jsonl:1: key 'input' is missing"),
    ('{"input": 1, "output": "b"}\n', r"data.jsonl:1: key 'input' is not a string"),
    ('["a", "b"]\n', r"data.jsonl:1: expected a JSON object, got list"),
], ids=["not-json", "no-output", "no-input", "not-string", "not-object"])
def test_jsonl_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_jsonl(path)


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_jsonl(tmp_path / "nowhere.jsonl")


def test_saved_lines_are_plain_objects(tmp_path):
    path = tmp_path / "data.jsonl"
    save_jsonl(path, [Example(input="x", output="y")])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"input": "x", "output": "y"}]
