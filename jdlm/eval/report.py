"""Evaluation results: per-example records, one report per (task, strategy), JSON files and a text table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable, Sequence

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    """One evaluated example.

    input: the task input (or the HumanEval task id); output: the generated answer, the decoded text cut at EOS;
    correct: the verdict on it; nfe: forward passes spent on it; tokens: generated tokens up to and including the
    first EOS; reference: the example's own answer (a generated task's, or a --data file's), None where there is
    none (countdown files without solutions, HumanEval, files written before it was recorded).
    """

    input: str
    output: str
    correct: bool
    nfe: int
    tokens: int
    reference: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalReport:
    """Accuracy and cost of one strategy on one task.

    Attributes:
      task: task name ("sudoku", ..., "humaneval").
      strategy: the spec's readable name ("threshold:0.9 dual"); rule, cache, tokens_per_step and temperature
        are the spec's fields, family its plot line.
      n: examples evaluated; accuracy: fraction correct (pass@1 for HumanEval); mean_nfe: forward passes per
        example.
      tokens_per_s: generated tokens (up to and including each example's first EOS) per second of decode wall
        time, compilation excluded; decode_s: that wall time; compile_s: wall time of the batches that compiled
        (first batch of each shape: compilation plus one run).
      gen_length, block_length, prompt_length, batch_size: the shapes decoded with.
      device: the JAX device kind the timings come from.
      records: one Record per example, in input order.
      strategy_config: the whole strategy that ran (`jdlm.Strategy.to_dict()`; `Strategy.from_dict` rebuilds it),
        so the result can be re-run; None in files written before it was recorded.
      data: {"path", "format"} of the --data file evaluated (`jdlm.eval.formats`), None for the task's own
        examples.
      mean_guide_nfe: forward passes of the AR guide per example (its prompt prefill included); None unguided.
    """

    task: str
    strategy: str
    family: str
    rule: str
    cache: str
    tokens_per_step: int
    temperature: float
    n: int
    accuracy: float
    mean_nfe: float
    tokens_per_s: float
    decode_s: float
    compile_s: float
    gen_length: int
    block_length: int
    prompt_length: int | None
    batch_size: int
    device: str
    records: tuple[Record, ...] = ()
    strategy_config: dict | None = None
    data: dict | None = None
    mean_guide_nfe: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"records": [dataclasses.asdict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict) -> "EvalReport":
        return cls(**(d | {"records": tuple(Record(**r) for r in d.get("records", ()))}))


def write_json(reports: Iterable[EvalReport], path: str | Path) -> Path:
    """Writes reports (with their records) as one JSON document: {"format_version": 1, "reports": [...]}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format_version": FORMAT_VERSION, "reports": [r.to_dict() for r in reports]}
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_json(path: str | Path) -> list[EvalReport]:
    """The reports `write_json` wrote."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {doc.get('format_version')!r}, expected {FORMAT_VERSION}")
    return [EvalReport.from_dict(d) for d in doc["reports"]]


COLUMNS = ("task", "strategy", "n", "accuracy", "mean NFE", "tokens/s")


def format_table(reports: Sequence[EvalReport]) -> str:
    """A Markdown table (aligned, so it reads in a terminal too): task, strategy, n, accuracy, mean NFE, tokens/s."""
    rows = [(r.task, r.strategy, str(r.n), f"{r.accuracy:.3f}", f"{r.mean_nfe:.1f}", f"{r.tokens_per_s:.1f}")
            for r in reports]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(COLUMNS)]
    left = (True, True, False, False, False, False)  # text left, numbers right

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if is_left else c.rjust(w)
                                 for c, w, is_left in zip(cells, widths, left)) + " |"

    rule = "|" + "|".join((":" + "-" * (w + 1)) if is_left else ("-" * (w + 1) + ":")
                          for w, is_left in zip(widths, left)) + "|"
    return "\n".join([line(COLUMNS), rule] + [line(row) for row in rows])


def write_tables(reports: Sequence[EvalReport], out: str | Path, stem: str, heading: str) -> None:
    """`out/stem.json` (`write_json`) and `out/stem.md`: `heading`, then `format_table`."""
    out = Path(out)
    write_json(reports, out / f"{stem}.json")
    (out / f"{stem}.md").write_text(f"{heading}\n\n{format_table(reports)}\n", encoding="utf-8")
