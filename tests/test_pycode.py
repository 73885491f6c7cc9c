"""Tests for the pycode task: per-file split purity, determinism, window lengths, the lexical scorer."""

import pytest

from jdlm.tasks import TASKS, pycode, split_of
from jdlm.tasks.pycode import PyCode, lexically_consistent, stdlib_sources

TASK = TASKS["pycode"]


@pytest.fixture(scope="module")
def split_texts():
    """Every file of each split joined into one text (NUL never occurs in the examples)."""
    return {s: "\0".join(text for path, text in stdlib_sources() if split_of(path) == s) for s in ("train", "eval")}


def test_sources_are_the_stdlib_without_tests_or_large_files():
    paths = [path for path, _ in stdlib_sources()]
    assert len(paths) > 300 and paths == sorted(paths) and "json/decoder.py" in paths
    assert not [p for p in paths if {"test", "tests", "idle_test", "site-packages"} & set(p.split("/")[:-1])]
    assert "encodings/idna.py" in paths and "encodings/cp1252.py" not in paths  # generated tables are skipped
    assert all((pycode.stdlib_root() / p).stat().st_size <= pycode.MAX_FILE_BYTES for p in paths)
    assert {split_of(p) for p in paths} == {"train", "eval"}


def test_each_file_is_in_one_split_only(split_texts):
    """An example's window comes from a file of its split; an eval window occurs in no train file."""
    for e in TASK.generate("train", 200, seed=3):
        assert e.input + "\n" + e.output in split_texts["train"] and split_of(e.input) == "train"
    for e in TASK.generate("eval", 60, seed=3):
        window = e.input + "\n" + e.output
        assert window in split_texts["eval"] and window not in split_texts["train"] and split_of(e.input) == "eval"


def test_generation_is_deterministic_and_seeded():
    a = TASK.generate("train", 50, seed=0)
    assert a == PyCode().generate("train", 50, seed=0) and a[:10] == TASK.generate("train", 10, seed=0)
    assert a != TASK.generate("train", 50, seed=1)
    assert TASK.generate("eval", 20) == TASK.generate("eval", 20)


@pytest.mark.parametrize("prompt_chars,answer_chars", [(128, 64), (40, 24), (300, 200)])
def test_windows_are_whole_lines_of_the_right_lengths(split_texts, prompt_chars, answer_chars):
    task = PyCode(prompt_chars=prompt_chars, answer_chars=answer_chars)
    line_ends = 0
    for e in task.generate("train", 100, seed=5):
        assert prompt_chars // 2 <= len(e.input) <= prompt_chars
        assert answer_chars // 2 <= len(e.output.strip()) and len(e.output) <= task.max_output_chars
        assert e.input == e.input.rstrip() and e.output == e.output.rstrip()
        assert "\t" not in e.input + e.output and (e.input + e.output).isascii()
        text = split_texts["train"]
        window = e.input + "\n" + e.output
        at = max(text.find("\n" + window), text.find("\0" + window)) + 1
        assert at > 0 or text.startswith(window), "the input starts at a line start"
        if text[at + len(e.input) + 1 + len(e.output):].lstrip(" ")[:1] in ("\n", "\0", ""):
            line_ends += 1
        else:  # cut mid-line: only when no line end falls in the answer's second half
            assert "\n" not in e.output[answer_chars // 2:], e
        assert task.score(e.input, e.output)
    assert line_ends > 10


def test_bad_knobs_are_reported():
    for knobs in ({"prompt_chars": 4}, {"answer_chars": 0}, {"prompt_chars": "long"}):
        with pytest.raises(ValueError, match="_chars"):
            PyCode(**knobs)


@pytest.mark.parametrize("input,continuation,consistent", [
    ("x = f(a, [b, c])", "y = {1: (2)}", True),
    ("x = f(a, [b,", " c)]", False),
    ("x = 'abc", "y = 1", False),
    ("y = 1", "x = 'abc", True),  # cut mid-line
    ("    b, c)", "x = [1]", True),  # the window starts inside a call
    ("    b, c)", "x = [1)", False),
    ('x = """a ( b', 'c ] d"""\ny = (1)', True),
    ("don't stop", '"""\nx = (1, 2)', True),  # the window starts inside a docstring, which the text closes
    ("don't stop", '"""\nx = (1, 2]', False),
    ("don't stop", "x = (1, 2]", False),  # inside a docstring that never closes: no excuse
    ("s = '''a ' b", ") ] '''\nz = [x for x in 'a(b']", True),
    ('s = "a \\" b"', "t = ('\\\\')", True),
])
def test_lexical_consistency(input, continuation, consistent):
    assert lexically_consistent(input, continuation) is consistent


def test_score_rejects_inconsistent_or_misshapen_continuations():
    input = "def lookup(table, key):\n    \"\"\"The value stored under key.\"\"\"\n    for name, value in table:"
    assert TASK.score(input, "        if name == key:\n            return value[0]")
    assert not TASK.score(input, "        if name == key:\n            return value[0)")  # mismatched bracket
    assert not TASK.score(input, "        if name == 'key:\n            return value[0]")  # string left open
    assert not TASK.score(input, "        return value")  # too short
    assert not TASK.score(input, "        if name == key:\n\t\t\treturn value[0]")  # tabs
    assert not TASK.score("x = 1", "        if name == key:\n            return value[0]")  # not a window
    e = TASK.generate("eval", 1, seed=2)[0]
    assert TASK.score(e.input, e.output) and TASK.score(e.input, "\n  " + e.output + " \n")
