"""Open-ended code continuation over the Python standard library's own source (available offline everywhere).

Unlike the other tasks there is no single right answer: `score` only checks that an output is a well-formed,
lexically consistent continuation (see `PyCode.score`). The real measure of a decoding strategy on this task is
how far its continuations' distribution is from exact sampling's or from the real code's
(`jdlm.eval.distribution`, docs/eval/distribution.md).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import random
import re
import sysconfig
from pathlib import Path

from jdlm.tasks.base import Example, Task, split_of

MAX_FILE_BYTES = 200_000  # larger files (generated tables, mostly) are skipped
SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
GENERATED_MARK = "Python Character Mapping Codec"  # encodings/cp*.py and friends: generated, near-identical tables
NOT_PRINTABLE = re.compile(r"[^\x20-\x7e\n]")  # the examples are printable ASCII and newlines: no tabs, no \r, \f
# Lexical scanning of Python text: comments, string openings, brackets.
_TOKEN = re.compile(r"(?P<comment>#[^\n]*)|(?P<triple>\"\"\"|''')|(?P<single>[\"'])|(?P<open>[(\[{])|(?P<close>[)\]}])")
_TRIPLE_END = {q: re.compile(r"(?:\\.|[^\\])*?" + q, re.DOTALL) for q in ('"""', "'''")}
_SINGLE_END = {q: re.compile(r"(?:\\.|[^\\\n" + q + r"])*(" + q + ")?", re.DOTALL) for q in "\"'"}
_PAIRS = {")": "(", "]": "[", "}": "{"}


def stdlib_root() -> Path:
    """The running interpreter's standard library directory (`Lib`, or lib/pythonX.Y)."""
    return Path(sysconfig.get_paths()["stdlib"])


@functools.cache
def stdlib_sources() -> tuple[tuple[str, str], ...]:
    """(relative path, text) of every usable .py file of the standard library, sorted by path.

    Skips test suites (any folder named test, tests or idle_test, and test_*.py), site-packages, files over
    MAX_FILE_BYTES, files that are not valid UTF-8 and the generated codec tables (GENERATED_MARK: ~70 files that
    repeat each other line for line across the splits). Newlines are normalised to "\\n" on reading.
    """
    root, sources = stdlib_root(), []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if SKIPPED_DIRS & set(rel.parts[:-1]) or rel.name.startswith("test_") or not path.is_file():
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if GENERATED_MARK in text[:500]:
            continue
        sources.append((rel.as_posix(), text))
    return tuple(sorted(sources))


@dataclasses.dataclass(frozen=True)
class _Corpus:
    """The files of one split with their line starts; `cumulative[i]` counts the line starts of files [0, i)."""

    texts: tuple[str, ...]
    line_starts: tuple[tuple[int, ...], ...]
    cumulative: tuple[int, ...]


@functools.cache
def _corpus(split: str | None) -> _Corpus:
    """The standard library files whose path hashes to `split` (None: all files)."""
    texts = tuple(text for path, text in stdlib_sources() if split is None or split_of(path) == split)
    starts = tuple(tuple([0] + [m.end() for m in re.finditer("\n", text)]) for text in texts)
    cumulative = [0]
    for s in starts:
        cumulative.append(cumulative[-1] + len(s))
    return _Corpus(texts, starts, tuple(cumulative))


@functools.cache
def _joined_text(split: str) -> str:
    """Every file of `split` in one string, NUL-separated (NUL never occurs in an example)."""
    return "\0".join(_corpus(split).texts)


def lexically_consistent(input: str, continuation: str) -> bool:
    """Whether `input + "\\n" + continuation`, read from a line start of Python source, has no lexical contradiction.

    A contradiction is a closing bracket that does not match the innermost bracket opened in the text, or a
    one-line string that meets the end of its line unclosed. The bracket nesting outside the text is unknown (a
    closer with nothing open is fine), and ending anywhere (mid-string, mid-bracket) is fine: the text is a cut
    window. The text is read as code, unless the input alone contradicts itself as code: then it may start inside
    a docstring, provided the text closes it (an unclosed docstring would excuse anything). Real windows that fail
    (mostly prose with apostrophes) are redrawn by the generator.
    """
    text = input + "\n" + continuation
    if _consistent_from(input + "\n", None):  # the input is whole lines
        return _consistent_from(text, None)
    return any(q in text and _consistent_from(text, q) for q in ('"""', "'''"))


def _consistent_from(text: str, state: str | None) -> bool:
    pos, stack = 0, []
    if state is not None:  # inside a docstring: skip to its end
        end = _TRIPLE_END[state].match(text)
        if end is None:
            return True
        pos = end.end()
    while (token := _TOKEN.search(text, pos)) is not None:
        kind, pos = token.lastgroup, token.end()
        if kind == "triple":
            end = _TRIPLE_END[token[0]].match(text, pos)
            if end is None:
                return True
            pos = end.end()
        elif kind == "single":
            end = _SINGLE_END[token[0]].match(text, pos)
            pos = end.end()
            if end[1] is None:  # unclosed: fine only at the very end (a cut), not at a line end
                return pos >= len(text) or text[pos:] == "\\"
        elif kind == "open":
            stack.append(token[0])
        elif kind == "close" and stack and stack.pop() != _PAIRS[token[0]]:
            return False
    return True


@dataclasses.dataclass(frozen=True, kw_only=True)
class PyCode(Task):
    """Continue real Python code: the standard library's own source.

    Input: whole lines of one file starting at a line start, at most `prompt_chars` characters and at least half
    that (the last line without its newline). Output: the next `answer_chars` characters, cut after the last line
    end that keeps at least half of them (else mid-line), trailing whitespace removed. Printable ASCII and newlines
    only (no tabs). Blank-ended inputs and answers under `answer_chars // 2` non-space characters are redrawn.

    Splits are per file: a file is train or eval by `split_of(relative path)`, so no eval file is ever seen in
    training. An example is also kept only where `split_of(input)` agrees, so the usual input-hash check holds
    (about 1/16 of each split's windows are unused), and an eval window that occurs verbatim in a train file
    (copied code, ~1.5%) is redrawn. That leaves ~590 distinct eval examples at the default difficulty. Generated
    data depend on the interpreter's standard library (its version); `stdlib_sources` lists the files.

    Difficulty: `prompt_chars` (context length) and `answer_chars` (continuation length). The defaults keep the
    small models' shapes: with their tokenizer, prompts take at most ~120 tokens (bucket 128) and answers at most
    ~62, so prompt + answer fit the tiny model's 256 positions and ~97% of examples fit 112-token training rows
    (160 / 96 characters would need a 256-token prompt bucket and drop a fifth of the rows).
    """

    name = "pycode"
    prompt_chars: int = 128
    answer_chars: int = 64

    def __post_init__(self):
        for knob, lo, hi in (("prompt_chars", 16, 4000), ("answer_chars", 8, 4000)):
            value = getattr(self, knob)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{knob} must be an int in [{lo}, {hi}], got {value!r}")

    @property
    def max_output_chars(self) -> int:
        return self.answer_chars

    def sample(self, rng: random.Random) -> Example | None:
        return self._draw(rng, _corpus(None))

    def sample_from(self, split: str, rng: random.Random) -> Example | None:
        """A window of a file of `split` (see the class docstring); an eval window found verbatim in a train file
        is refused (None)."""
        example = self._draw(rng, _corpus(split))
        if split == "eval" and example is not None and example.input + "\n" + example.output in _joined_text("train"):
            return None
        return example

    def _draw(self, rng: random.Random, corpus: _Corpus) -> Example | None:
        """A window starting at a line start drawn uniformly over the corpus's line starts; None to redraw."""
        k = rng.randrange(corpus.cumulative[-1])
        f = bisect.bisect_right(corpus.cumulative, k) - 1
        text, starts = corpus.texts[f], corpus.line_starts[f]
        first = k - corpus.cumulative[f]
        begin = starts[first]
        # The last line start at most prompt_chars + 1 past begin: the input is the lines before it, newline dropped.
        last = bisect.bisect_right(starts, begin + self.prompt_chars + 1) - 1
        if last <= first or starts[last] >= len(text):
            return None
        input = text[begin:starts[last] - 1]
        chunk = text[starts[last]:starts[last] + self.answer_chars]
        cut = chunk.rfind("\n")
        if cut >= self.answer_chars // 2 and text[starts[last] + self.answer_chars:][:1] != "\n":
            chunk = chunk[:cut]
        output = chunk.rstrip()
        if (len(input) < self.prompt_chars // 2 or input != input.rstrip() or len(output.strip()) < self.answer_chars // 2
                or NOT_PRINTABLE.search(input) or NOT_PRINTABLE.search(output)
                or not lexically_consistent(input, output)):
            return None
        return Example(input=input, output=output)

    def score(self, input: str, output: str) -> bool:
        """Whether `output` (surrounding whitespace ignored) is a plausible continuation of `input`.

        Plausible means well-formed and lexically consistent, not right: the input looks like this task's inputs
        (printable ASCII, `prompt_chars // 2` to `prompt_chars` characters), the output is printable ASCII of
        `answer_chars // 2` to `answer_chars` characters, and input + newline + output has no lexical
        contradiction (`lexically_consistent`: a mismatched bracket, a one-line string left open at a line end).
        Open-ended text has no reference here; compare distributions for quality (jdlm.eval.distribution).
        """
        out = output.strip()
        return bool(self.prompt_chars // 2 <= len(input) <= self.prompt_chars
                    and self.answer_chars // 2 <= len(out) <= self.answer_chars
                    and not NOT_PRINTABLE.search(input) and not NOT_PRINTABLE.search(out)
                    and lexically_consistent(input, out))
