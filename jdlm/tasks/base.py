"""Shared pieces of the task suite: the Example record, the Task base class, split assignment, templates, jsonl I/O."""

from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import json
import random
import re
import string
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

SPLITS = ("train", "eval")
EVAL_EVERY = 16  # an input belongs to "eval" iff its hash is 0 mod this, so about 1/16 of inputs are eval
PATIENCE = 10_000  # draws in a row without a new example before generate() gives up


@dataclasses.dataclass(frozen=True, kw_only=True)
class Example:
    """One task instance: `input` is what the prompt shows, `output` a correct answer (one of possibly many)."""

    input: str
    output: str


def split_of(input: str) -> str:
    """The split ("train" or "eval") that an input belongs to; a stable hash of its text, so splits never overlap."""
    digest = hashlib.sha256(input.encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % EVAL_EVERY == 0 else "train"


def as_range(value: int | Iterable[int], name: str, lo: int, hi: int) -> tuple[int, int]:
    """Reads a difficulty knob given as an int or an inclusive (min, max) pair; checks lo <= min <= max <= hi."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair) or not lo <= pair[0] <= pair[1] <= hi:
        raise ValueError(f"{name} must be an int or a (min, max) pair with {lo} <= min <= max <= {hi}, got {value!r}")
    return pair


def as_formats(value: str | Iterable[str], allowed: Iterable[str]) -> tuple[str, ...]:
    """Reads a `formats` knob given as one name or several; checks each is one of `allowed`."""
    formats = (value,) if isinstance(value, str) else tuple(value)
    if not formats or any(f not in allowed for f in formats):
        raise ValueError(f"formats must be a non-empty subset of {sorted(allowed)}, got {value!r}")
    return formats


class Task(abc.ABC):
    """A generated task. Subclasses are frozen dataclasses whose fields are the difficulty knobs.

    A subclass sets `name` and implements `sample` (one random example), `score` and `max_output_chars`;
    `generate` turns `sample` into deterministic, de-duplicated, split-pure lists.
    """

    name: ClassVar[str]

    @property
    @abc.abstractmethod
    def max_output_chars(self) -> int:
        """Upper bound on len(output) over everything this task generates at its difficulty."""

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> Example | list[Example] | None:
        """One random example of either split (or several at once, e.g. other solutions of one instance), or None
        to reject this draw and draw again."""

    def sample_from(self, split: str, rng: random.Random) -> Example | list[Example] | None:
        """A draw for `generate(split, ...)`: `sample` by default, which draws from both splits (`generate` keeps
        the examples of `split`). A task whose instances come from a split-divided source draws from it here."""
        return self.sample(rng)

    def split_key(self, input: str) -> str:
        """The instance an input states, as text: its hash decides the split, and equal keys are one instance.

        The input itself by default; a task whose inputs come in several formats returns a canonical form, so that
        one instance written two ways never lands in both splits.
        """
        return input

    @abc.abstractmethod
    def score(self, input: str, output: str) -> bool:
        """Whether `output` (a model's answer, surrounding whitespace ignored) solves `input`; never raises."""

    def prompt(self, input: str) -> str:
        """The text the model sees: a task tag line, then the input; the answer follows and ends at EOS."""
        return f"{self.name}:\n{input}\n"

    @property
    def default_difficulty(self) -> dict[str, Any]:
        """The difficulty knobs that `generate` uses when given none."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def with_difficulty(self, **difficulty: Any) -> Task:
        """This task with some difficulty knobs replaced (checked by the subclass's __post_init__)."""
        unknown = sorted(set(difficulty) - set(self.default_difficulty))
        if unknown:
            raise ValueError(f"{self.name} has no difficulty knob {unknown}; known: {sorted(self.default_difficulty)}")
        return dataclasses.replace(self, **difficulty)

    def generate(self, split: str, n: int, *, seed: int = 0, **difficulty: Any) -> list[Example]:
        """`n` distinct examples of `split`, the same for the same (split, n, seed, difficulty).

        Args:
          split: "train" or "eval"; membership is decided by `split_of(split_key(example.input))`.
          n: how many examples.
          seed: picks the random stream; different seeds give different examples.
          **difficulty: overrides of `default_difficulty`.
        Returns:
          `n` examples in draw order; a shorter request is a prefix of a longer one. Instances (`split_key`)
          are distinct across draws; a draw that returns several solutions of one instance keeps them all.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        task = self.with_difficulty(**difficulty)
        rng = random.Random(hashlib.sha256(repr((task, split, seed)).encode()).digest())
        seen, examples, misses = set(), [], 0
        while len(examples) < n:
            drawn = task.sample_from(split, rng)
            this_draw: set[tuple[str, str]] = set()  # one instance may come with several outputs in one draw only
            for example in [] if drawn is None else [drawn] if isinstance(drawn, Example) else drawn:
                key = task.split_key(example.input)
                if (key in seen or (key, example.output) in this_draw or split_of(key) != split
                        or len(examples) == n):
                    continue
                this_draw.add((key, example.output))
                examples.append(example)
            seen.update(key for key, _ in this_draw)
            misses = 0 if this_draw else misses + 1
            if misses > PATIENCE:
                raise ValueError(f"{task!r} found only {len(examples)} of {n} distinct {split} examples; "
                                 "ask for fewer or widen the difficulty")
        return examples


@dataclasses.dataclass(frozen=True, kw_only=True)
class Template:
    """A str.format text whose int fields are drawn from inclusive ranges and word fields from fixed choices.

    `parse` inverts `fill`, which lets a scorer recover the parameters of a problem from its input text.
    """

    text: str
    ints: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    words: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        fields = {f for _, f, _, _ in string.Formatter().parse(self.text) if f is not None}
        if fields != set(self.ints) | set(self.words):
            raise ValueError(f"fields of {self.text!r} are {sorted(fields)}, but ints and words name "
                             f"{sorted(set(self.ints) | set(self.words))}")

    def draw(self, rng: random.Random) -> dict[str, Any]:
        values: dict[str, Any] = {k: rng.randint(lo, hi) for k, (lo, hi) in self.ints.items()}
        return values | {k: rng.choice(choices) for k, choices in self.words.items()}

    def fill(self, values: Mapping[str, Any]) -> str:
        return self.text.format(**values)

    @functools.cached_property
    def _regex(self) -> re.Pattern:
        parts, seen = [], set()
        for literal, field, _, _ in string.Formatter().parse(self.text):
            parts.append(re.escape(literal))
            if field is None:
                continue
            if field in seen:  # a repeated field must repeat the same text
                parts.append(f"(?P={field})")
                continue
            seen.add(field)
            body = "0|[1-9][0-9]{0,5}" if field in self.ints else "|".join(map(re.escape, self.words[field]))
            parts.append(f"(?P<{field}>{body})")
        return re.compile("".join(parts))

    def parse(self, text: str) -> dict[str, Any] | None:
        """The field values for which `fill` gives `text`, or None if it does not match."""
        match = self._regex.fullmatch(text)
        if match is None:
            return None
        return {k: int(v) if k in self.ints else v for k, v in match.groupdict().items()}


def load_jsonl(path: str | Path) -> list[Example]:
    """Reads examples from a jsonl file with one {"input": str, "output": str} object a line (blank lines skipped).

    Raises:
      FileNotFoundError: no such file.
      ValueError: a line that is not JSON, not an object, or lacks a string "input" or "output"; names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no jsonl file at {path}")
    examples = []
    for lineno, record in json_records(path):
        for key in ("input", "output"):
            if not isinstance(record.get(key), str):
                problem = "missing" if key not in record else "not a string"
                raise ValueError(f"{path}:{lineno}: key {key!r} is {problem}; each line needs string "
                                 '"input" and "output"')
        examples.append(Example(input=record["input"], output=record["output"]))
    return examples


def json_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a jsonl file; ValueError naming a line that is not a JSON
    object."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def save_jsonl(path: str | Path, examples: Iterable[Example]) -> None:
    """Writes examples in the form `load_jsonl` reads, one object a line."""
    with Path(path).open("w", encoding="utf-8") as f:
        f.writelines(json.dumps({"input": example.input, "output": example.output}, ensure_ascii=False) + "\n" for example in examples)
