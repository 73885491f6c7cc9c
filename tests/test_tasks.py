"""Tests for jdlm.tasks: determinism, split purity, scorers (own outputs pass, corruptions fail), difficulty, jsonl."""

import json
import re
import time

import pytest

from jdlm.tasks import (
    TASKS,
    Example,
    arithmetic,
    code,
    countdown,
    get_task,
    load_jsonl,
    multistep,
    save_jsonl,
    split_of,
    sudoku,
    sudoku9,
)
from jdlm.tasks.base import Task

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
    train_keys, eval_keys = {task.split_key(e.input) for e in train}, {task.split_key(e.input) for e in eval_}
    assert len(train_keys) == 300 and len(eval_keys) == 40
    assert not train_keys & eval_keys
    assert {split_of(x) for x in train_keys} == {"train"} and {split_of(x) for x in eval_keys} == {"eval"}


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
    assert set(TASKS) == {"sudoku", "sudoku9", "countdown", "arithmetic", "multistep", "code", "pycode", "latin"}
    assert get_task("sudoku") is TASKS["sudoku"]
    with pytest.raises(ValueError, match="arithmetic, code, countdown, latin, multistep, pycode, sudoku, sudoku9"):
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


def test_countdown_targets_stay_in_the_public_range_and_spread_over_it():
    targets = [countdown.parse_instance(e.input)[1] for e in TASKS["countdown"].generate("train", 400)]
    assert all(1 <= t <= 100 for t in targets)
    assert len({t // 10 for t in targets}) >= 10  # not piled up on the small results of subtraction and division


@pytest.mark.parametrize("style", sorted(countdown.FORMATS))
def test_countdown_every_input_style_parses_and_scores(style):
    task = TASKS["countdown"].with_difficulty(formats=(style,))
    for e in task.generate("train", 20):
        sources, target = countdown.parse_instance(e.input)
        assert e.input == countdown.FORMATS[style][0].format(
            sources=countdown.FORMATS[style][1].join(map(str, sources)), target=target)
        assert task.score(e.input, e.output)
        assert task.split_key(e.input) == ",".join(map(str, sorted(sources) + [target]))


def test_countdown_one_instance_in_two_styles_has_one_split_key():
    task = TASKS["countdown"]
    assert task.split_key("8,2,5,20") == task.split_key("Reach 20 with 5 2 8.") == task.split_key(
        "Using the numbers [2, 8, 5], create an equation that equals 20.")


def test_countdown_several_solutions_per_instance_are_distinct_and_valid():
    task = TASKS["countdown"].with_difficulty(solutions=3, n_sources=4)
    examples = task.generate("train", 60)
    by_input = {}
    for e in examples:
        assert task.score(e.input, e.output)
        by_input.setdefault(e.input, set()).add(e.output)
    assert len(by_input) < len(examples)  # instances with several solutions exist
    assert all(len(v) <= 3 for v in by_input.values())


def test_countdown_find_solutions_finds_every_solution_of_a_small_instance():
    import random
    solutions = countdown.find_solutions([2, 3, 4], 10, limit=100, rng=random.Random(0))
    task = TASKS["countdown"]
    assert all(task.score("2,3,4,10", s) for s in solutions)
    # 2*3+4, 4*3-2, (3*2)+4 counted once, 2*(4+... ): check two known distinct ones are there
    canon = {",".join(sorted(s.split(","))) for s in solutions}
    assert any("4*3=12" in s or "3*4=12" in s for s in canon) and any("=6" in s for s in canon)


@pytest.mark.parametrize("output, ok", [
    ("(8/2)*5", True), ("8*5/2", True), ("5*(8/2)", True), ("8/2*5*1", False), ("8*2+5", False),
    ("8/(2*5)", False), ("(8-2)*5", False), ("2**5", False), ("__import__('os')", False), ("8/2*5=20", False),
], ids=["paren", "left-to-right", "other", "extra-number", "wrong-value", "inexact", "wrong", "power", "call",
        "expression-with-equals"])
def test_countdown_accepts_one_expression_with_the_same_rules(output, ok):
    assert TASKS["countdown"].score("8,2,5,20", output) is ok


# ---------------------------------------------------------------------------------------------- sudoku9

def test_sudoku9_givens_uniqueness_and_formats():
    task = TASKS["sudoku9"].with_difficulty(givens=(34, 36), formats=sudoku9.FORMATS)
    styles = set()
    for e in task.generate("train", 12):
        grid = sudoku9.parse_grid(e.input)
        assert 34 <= sum(1 for d in grid if d) <= 36
        assert sudoku9.count_solutions(grid) == 1
        assert len(e.output) == 81 and task.score(e.input, e.output)
        styles.add("grid" if "\n" in e.input else "dots" if "." in e.input else "line")
    assert len(styles) >= 2


def test_sparse_sudoku9_are_made_greedily_and_unique():
    task = TASKS["sudoku9"].with_difficulty(givens=(24, 25))
    examples = task.generate("eval", 2, seed=0)
    for e in examples:
        grid = sudoku9.parse_grid(e.input)
        assert sum(1 for d in grid if d) in (24, 25)
        assert sudoku9.count_solutions(grid) == 1 and task.score(e.input, e.output)


def test_sudoku9_symmetric_variants_are_other_valid_unique_puzzles():
    task = TASKS["sudoku9"].with_difficulty(variants=4)
    examples = task.generate("train", 8)
    assert len({e.input for e in examples}) == 8
    for e in examples:
        assert sudoku9.count_solutions(sudoku9.parse_grid(e.input)) == 1 and task.score(e.input, e.output)


def test_sudoku9_scorer_checks_rows_columns_boxes_and_givens():
    task = TASKS["sudoku9"]
    e = task.generate("eval", 1)[0]
    assert task.score(e.input, e.output)
    flat = list(e.output)
    i, j = 0, 1  # swapping two cells of a row keeps the row valid but breaks a column
    flat[i], flat[j] = flat[j], flat[i]
    assert not task.score("0" * 81, "".join(flat))
    assert task.score("0" * 81, e.output)  # a blank grid accepts any valid solution
    given = next(k for k, ch in enumerate(e.input) if ch != "0")
    other = e.input[:given] + str(int(e.input[given]) % 9 + 1) + e.input[given + 1:]
    assert not task.score(other, e.output)  # the answer must keep the givens
    assert not task.score(e.input, e.output[:80])


def test_sudoku9_count_solutions_counts():
    solved = [int(ch) for ch in TASKS["sudoku9"].generate("train", 1)[0].output]
    assert sudoku9.count_solutions(solved) == 1
    clash = [solved[1]] + solved[1:]
    assert sudoku9.count_solutions(clash) == 0
    assert sudoku9.count_solutions([0] * 81, limit=5) == 5


# ---------------------------------------------------------------------------------------------- multistep

@pytest.mark.parametrize("steps", [1, 4, (6, 8), 10], ids=["1", "4", "6-8", "10"])
def test_multistep_steps_values_and_parsing(steps):
    lo, hi = (steps, steps) if isinstance(steps, int) else steps
    task = TASKS["multistep"]
    for e in task.generate("train", 40, steps=steps):
        start, ops = multistep.parse_problem(e.input)
        assert lo <= len(ops) <= hi
        equations, answer = multistep.solve(start, ops)
        assert e.output == ",".join(equations) + f"\n#### {answer}"
        assert all(1 <= int(r) <= multistep.MAX_VALUE for *_, r in EQUATION.findall(e.output))


def test_multistep_scores_the_final_number_of_the_parsed_chain():
    task = TASKS["multistep"]
    text = "Start with 37, add 15, then multiply by 3; subtract 48, divide by 6. What is the result?"
    assert task.score(text, "#### 18") and task.score(text, "37+15=52\n#### 18")
    assert not task.score(text, "#### 19") and not task.score(text, "18")
    assert not task.score(text.replace("divide by 6", "divide by 7"), "#### 18")  # inexact: not a valid problem
    assert not task.score("Start with 37, juggle 15. What is the result?", "#### 52")


def test_generate_keeps_several_outputs_of_one_draw_but_not_repeated_instances():
    import dataclasses
    import random

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Echo(Task):
        name = "echo"

        max_output_chars = 3

        def sample(self, rng: random.Random):
            n = rng.randint(0, 3)  # few instances: repeats across draws are common
            return [Example(input=str(n), output="a"), Example(input=str(n), output="b")]

        def score(self, input, output):
            return True

    examples = Echo().generate("train", 6)
    assert len(examples) == 6 and len({e.input for e in examples}) == 3  # 3 instances x 2 outputs, no repeats


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
