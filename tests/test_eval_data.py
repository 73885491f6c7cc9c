"""`jdlm eval --data FILE` in public formats (jdlm/eval/formats.py): each format read from small files written here,
bad files refused in one line, the implied task, GSM8K scored by its final answer, and the JSON keeping every
example's generated answer and reference (the shipped `tiny`, two examples)."""

import json
from pathlib import Path

import pytest

from jdlm import eval as E
from jdlm.errors import UsageError
from jdlm.eval.formats import final_answer, final_answer_matches, read_data
from jdlm.tasks import TASKS, Example

ROOT = Path(__file__).resolve().parents[1]
# A solved 9x9 grid (row r, column c: (3r + r//3 + c) mod 9 + 1) and the puzzle with every third cell blank.
SOLVED9 = "".join(str((3 * r + r // 3 + c) % 9 + 1) for r in range(9) for c in range(9))
PUZZLE9 = "".join("0" if i % 3 == 0 else d for i, d in enumerate(SOLVED9))
SOLVED4 = "1234341221434321"
PUZZLE4 = "1.3.....2......1"
SWAPPED4 = SOLVED4.translate(str.maketrans("12", "21"))  # a valid grid that changes the given 1


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *records) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


# ---------------------------------------------------------------------------------------------- reading each format


def test_plain_jsonl_needs_a_task(tmp_path):
    data = read_data(jsonl(tmp_path / "mine.jsonl", {"input": "50,14,54,10", "output": "54-50=4,14-4=10"},
                           {"input": "1,2,3"}))
    assert data.format == "jsonl" and data.task is None and data.tasks == ()
    assert [(e.input, e.output) for e in data.examples] == [("50,14,54,10", "54-50=4,14-4=10"), ("1,2,3", "")]
    data.check_task("countdown")  # any task may score plain examples


def test_countdown_nums_and_target(tmp_path):
    """TinyZero's {"nums", "target"}, with and without a solution in our equation form."""
    data = read_data(jsonl(tmp_path / "cd.jsonl", {"nums": [44, 19, 35], "target": 98},
                           {"target": 24, "nums": [1, 2, 3, 4], "solution": "1*2=2,2*3=6,6*4=24"}))
    assert data.format == "countdown" and data.task == "countdown" and data.scorer is None
    assert [(e.input, e.output) for e in data.examples] == [("44,19,35,98", ""),
                                                           ("1,2,3,4,24", "1*2=2,2*3=6,6*4=24")]
    assert TASKS["countdown"].score(data.examples[1].input, data.examples[1].output)  # our input form


def test_sudoku_kaggle_csv_9x9(tmp_path):
    data = read_data(write(tmp_path / "sudoku.csv", f"quizzes,solutions\n{PUZZLE9},{SOLVED9}\n"))
    assert data.format == "sudoku" and data.task == "sudoku9"
    assert data.examples[0].input == PUZZLE9 and data.examples[0].output == SOLVED9


def test_sudoku_csv_with_dots_and_more_columns_4x4(tmp_path):
    """The "puzzle,solution" layout (with other columns, '.' for blanks); 16 cells are our 4x4 form."""
    data = read_data(write(tmp_path / "s.csv", f"id,puzzle,solution,clues\n7,{PUZZLE4},{SOLVED4},5\n"))
    ex = data.examples[0]
    assert data.task == "sudoku" and ex.input == "1030\n0000\n2000\n0001" and ex.output == "1234\n3412\n2143\n4321"
    assert TASKS["sudoku"].score(ex.input, ex.output)


def test_sudoku_jsonl_without_solutions(tmp_path):
    data = read_data(jsonl(tmp_path / "s.jsonl", {"puzzle": PUZZLE9.replace("0", ".")}, {"puzzle": PUZZLE9}))
    assert data.task == "sudoku9" and [e.input for e in data.examples] == [PUZZLE9, PUZZLE9]
    assert [e.output for e in data.examples] == ["", ""]


def test_gsm8k(tmp_path):
    data = read_data(jsonl(tmp_path / "gsm.jsonl", {"question": " Ann has 3 bags of 4. How many? ",
                                                    "answer": "3*4=<<3*4=12>>12\n#### 12"}))
    assert data.format == "gsm8k" and data.task == "arithmetic" and data.tasks == ("arithmetic", "multistep")
    assert data.examples[0].input == "Ann has 3 bags of 4. How many?"
    assert data.scorer is final_answer_matches
    with pytest.raises(UsageError, match="holds gsm8k examples, for task arithmetic or multistep; task countdown"):
        data.check_task("countdown")


@pytest.mark.parametrize("text,value", [("x\n#### 12", 12), ("#### 1,000", 1000), ("#### $18.50", 18.5),
                                        ("#### -3", -3), ("a #### 1 b #### 7 ", 7), ("no marker 12", None),
                                        ("#### twelve", None), ("####", None)])
def test_final_answer(text, value):
    got = final_answer(text)
    assert (got is None) if value is None else float(got) == value


def test_final_answer_matches_numerically():
    ex = Example(input="q", output="work\n#### 18")
    assert final_answer_matches(ex, "9+9=18\n#### 18.0")
    assert not final_answer_matches(ex, "9+9=18\n#### 19")
    assert not final_answer_matches(ex, "18")  # the "####" line is the answer
    assert not final_answer_matches(Example(input="q", output="no answer"), "#### 18")


# ---------------------------------------------------------------------------------------------- bad files: one line

BAD = {
    "unknown suffix": ("data.txt", '{"input": "x"}\n', "unknown format '.txt'; accepted: jsonl"),
    "unknown keys": ("d.jsonl", '{"prompt": "x"}\n', "unknown format (its first object has keys prompt); accepted"),
    "not JSON": ("d.jsonl", '{"input": "a"}\n{oops\n', "d.jsonl:2: not valid JSON"),
    "not an object": ("d.jsonl", '[1, 2]\n', "d.jsonl:1: expected a JSON object, got list"),
    "empty": ("d.jsonl", "\n\n", "holds no examples"),
    "countdown float": ("d.jsonl", '{"nums": [1, 2.5], "target": 3}\n', "d.jsonl:1: countdown numbers must be integers"),
    "countdown too few": ("d.jsonl", '{"nums": [4], "target": 4}\n', "'nums' must be a list of at least two"),
    "countdown key lost": ("d.jsonl", '{"nums": [1, 2], "target": 3}\n{"nums": [1, 2]}\n', "d.jsonl:2: no 'target'"),
    "sudoku length": ("d.jsonl", '{"puzzle": "123"}\n', "81 (9x9) or 16 (4x4) cells, got 3"),
    "sudoku digit": ("d.jsonl", '{"puzzle": "5' + "0" * 15 + '"}\n', "a 16-cell puzzle holds digits 1-4"),
    "sudoku changes a given": ("d.csv", f"puzzle,solution\n{PUZZLE4},{SWAPPED4}\n",
                               "d.csv:2: the solution changes a given cell"),
    "sudoku sizes mixed": ("d.jsonl", f'{{"puzzle": "{PUZZLE4}"}}\n{{"puzzle": "{PUZZLE9}"}}\n',
                           "mixes examples of tasks sudoku, sudoku9"),
    "csv columns": ("d.csv", "question,answer\nx,y\n", "unknown CSV format (columns question, answer)"),
    "csv short row": ("d.csv", f"quizzes,solutions\n{PUZZLE9}\n", "d.csv:2: 1 fields where the header has 2"),
    "gsm8k no final answer": ("d.jsonl", '{"question": "q", "answer": "42"}\n', "'answer' must end in '#### N'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_are_one_line_usage_errors(tmp_path, case):
    name, text, message = BAD[case]
    with pytest.raises(UsageError) as error:
        read_data(write(tmp_path / name, text))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        read_data(tmp_path / "nothing.jsonl")


# ---------------------------------------------------------------------------------------------- the CLI and the JSON


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`jdlm eval ARGS` in this process (compiled decodes are shared between calls): exit code, stdout, stderr."""
    from jdlm.cli import main

    capsys.readouterr()
    code = main(["eval", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def records(path: Path) -> tuple[dict, list[dict]]:
    report, = json.loads(path.read_text())["reports"]
    return report, report["records"]


def test_cli_countdown_file_needs_no_task_and_keeps_each_answer(tmp_path, capsys):
    data = jsonl(tmp_path / "cd.jsonl", {"nums": [44, 19, 35], "target": 98}, {"nums": [25, 3, 4], "target": 97},
                 {"nums": [1, 2, 3], "target": 6})
    code, out, err = cli(capsys, "--data", str(data), "--limit", "2", "--json", str(tmp_path / "o.json"), "--quiet")
    assert code == 0, err
    assert "countdown" in out
    report, recs = records(tmp_path / "o.json")
    assert report["task"] == "countdown" and report["n"] == 2
    assert report["data"] == {"path": str(data), "format": "countdown"}
    assert [r["input"] for r in recs] == ["44,19,35,98", "25,3,4,97"]  # --limit 2: the first two
    for r in recs:
        assert set(r) == {"input", "output", "correct", "nfe", "tokens", "reference"}
        assert r["reference"] is None and isinstance(r["output"], str) and r["output"]  # the generated answer
        assert r["correct"] == TASKS["countdown"].score(r["input"], r["output"])
        assert isinstance(r["nfe"], int) and r["nfe"] > 0
    assert report["accuracy"] == sum(r["correct"] for r in recs) / 2
    assert E.read_json(tmp_path / "o.json")[0].records[0].output == recs[0]["output"]  # the reader keeps it


def test_cli_gsm8k_is_scored_by_the_final_answer(tmp_path, capsys):
    """Questions from our arithmetic templates, the second with a wrong reference: its verdict follows the
    reference's "#### N", not the task's own scorer."""
    ex1, ex2 = TASKS["arithmetic"].generate("eval", 2, seed=3)
    data = jsonl(tmp_path / "gsm.jsonl", {"question": ex1.input, "answer": ex1.output},
                 {"question": ex2.input, "answer": "worked\n#### 99999"})
    code, _, err = cli(capsys, "--data", str(data), "--limit", "2", "--json", str(tmp_path / "g.json"), "--quiet")
    assert code == 0, err
    report, (r1, r2) = records(tmp_path / "g.json")
    assert report["task"] == "arithmetic" and report["data"]["format"] == "gsm8k"
    assert (r1["reference"], r2["reference"]) == (ex1.output, "worked\n#### 99999")
    assert r1["correct"] == TASKS["arithmetic"].score(ex1.input, r1["output"])  # a right reference: the same verdict
    assert r2["correct"] is False  # 99999 is no answer of the task


def test_cli_sudoku_4x4_csv_implies_its_task(tmp_path, capsys):
    data = write(tmp_path / "s.csv", f"quizzes,solutions\n{PUZZLE4},{SOLVED4}\n")
    code, _, err = cli(capsys, "--data", str(data), "--json", str(tmp_path / "s.json"), "--quiet")
    assert code == 0, err
    report, (r,) = records(tmp_path / "s.json")
    assert report["task"] == "sudoku" and r["input"] == "1030\n0000\n2000\n0001"
    assert r["reference"] == "1234\n3412\n2143\n4321"
    assert r["correct"] == TASKS["sudoku"].score(r["input"], r["output"])


def test_cli_sudoku_9x9_goes_to_the_sudoku9_task(tmp_path, capsys):
    """Until sudoku9 is registered the run stops at the usual unknown-task line; after, it evaluates it."""
    data = write(tmp_path / "s9.csv", f"quizzes,solutions\n{PUZZLE9},{SOLVED9}\n")
    code, out, err = cli(capsys, "--data", str(data), "--limit", "1", "--quiet")
    if "sudoku9" in TASKS:
        assert code == 0 and "sudoku9" in out, err
    else:
        assert code == 2 and err.splitlines() == [f"error: unknown task 'sudoku9' (the task of --data {data}, sudoku "
                                                  f"examples); this jdlm has {', '.join(TASKS)}"]


@pytest.mark.parametrize("args,message", [
    (["--task", "sudoku"], "holds countdown examples, for task countdown; task sudoku cannot score them"),
    (["--task", "countdown", "--task", "sudoku"], "--data takes one --task"),
])
def test_cli_task_that_does_not_fit_the_file(tmp_path, capsys, args, message):
    data = jsonl(tmp_path / "cd.jsonl", {"nums": [1, 2], "target": 3})
    code, out, err = cli(capsys, "--data", str(data), *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err


def test_cli_plain_jsonl_without_task(tmp_path, capsys):
    data = jsonl(tmp_path / "p.jsonl", {"input": "1,2,3", "output": "1+2=3"})
    code, _, err = cli(capsys, "--data", str(data))
    assert code == 2 and err.strip() == (f'error: --data {data} holds {{"input", "output"}} examples of no particular '
                                         "task; name the task that prompts and scores them with --task")


def test_committed_eval_files_still_read(tmp_path):
    """docs/eval JSON written before `reference` and `data` existed: read with those as None."""
    reports = E.read_json(ROOT / "docs" / "eval" / "baseline.json")
    assert reports and all(r.data is None for r in reports)
    assert all(rec.reference is None for r in reports for rec in r.records)
