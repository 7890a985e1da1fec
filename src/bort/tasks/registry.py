"""Tasks: what a file row means (texts, label), which labels exist, which metrics count, how to submit.

A task reads the official files from a folder in the benchmark's layout (GLUE tsv, SuperGLUE jsonl), or
from the Hugging Face hub through `datasets` where the network allows. Labels are kept as canonical strings
(classification), floats (regression) or choice indices (multiple choice); a label a task does not know
is an error, never silently mapped.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bort import io
from bort.errors import BortError

KINDS = ("classification", "regression", "multiple_choice")
DATA_DIR_ENV = "BORT_DATA_DIR"


@dataclass(frozen=True)
class Example:
    """One task point: a text, an optional second text (or the answer choices), a label (None on test)."""

    text: str
    pair: str | None = None
    label: Any = None
    idx: Any = None
    choices: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "pair": self.pair, "label": self.label, "idx": self.idx,
                "choices": list(self.choices) if self.choices is not None else None}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Example:
        choices = row.get("choices")
        return cls(row["text"], row.get("pair"), row.get("label"), row.get("idx"),
                   tuple(choices) if choices is not None else None)


def unlabelled_text(examples: Iterable[Example]) -> str:
    """The examples' texts (text, pair, answer choices), one per line with whitespace collapsed, each once, in order:
    the task's own sentences as a corpus for general distillation. Labels are left out, so no answer leaks in."""
    lines: dict[str, None] = {}
    for example in examples:
        for text in (example.text, example.pair, *(example.choices or ())):
            if text and text.strip():
                lines[" ".join(text.split())] = None
    return "".join(line + "\n" for line in lines)


def canonical(value: Any) -> str:
    """File labels as strings: JSON booleans become 'true'/'false', everything else str()."""
    return str(value).lower() if isinstance(value, bool) else str(value).strip()


Parser = Callable[[dict[str, Any]], tuple[str, str | None, tuple[str, ...] | None]]


def columns(text: str, pair: str | None = None) -> Parser:
    """A row parser that takes the text (and pair) from named columns."""
    def parse(row: dict[str, Any]) -> tuple[str, str | None, tuple[str, ...] | None]:
        return row[text], (row[pair] if pair else None), None
    return parse


@dataclass
class Task:
    """A registered task: its files, label set, head kind and metrics (the first metric is the main one)."""

    name: str
    benchmark: str  # glue, superglue or custom
    kind: str
    metrics: tuple[str, ...]
    labels: tuple[str, ...] = ()  # classification: canonical label strings, in head-index order
    folder: str = ""  # under the data folder, e.g. glue/RTE
    files: dict[str, str] = field(default_factory=dict)  # split -> file name: train, dev, test (+ MNLI extras)
    parse: Parser = field(default=columns("sentence"))
    label_column: str = "label"
    index_column: str = "idx"
    headerless: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> field names (CoLA)
    dev_splits: tuple[str, ...] = ("dev",)  # the first is the main one; others get a metric suffix
    test_splits: dict[str, str] = field(default_factory=dict)  # test split -> submission file name
    hub: tuple[str, str] | None = None  # (dataset, config) for `datasets.load_dataset`
    hub_parse: Parser | None = None
    hub_splits: dict[str, str] = field(default_factory=dict)
    num_choices: int = 0
    paths: dict[str, Path] = field(default_factory=dict)  # custom tasks: split -> explicit file

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BortError(f"task {self.name}: kind must be one of {', '.join(KINDS)}, not '{self.kind}'")
        if self.kind == "classification" and len(self.labels) < 2:
            raise BortError(f"task {self.name}: a classification task needs at least two labels")

    @property
    def num_labels(self) -> int:
        return {"classification": len(self.labels), "regression": 1, "multiple_choice": 1}[self.kind]

    def metric_suffix(self, split: str) -> str:
        """'' for the main dev split, '_mm' for MNLI's mismatched one."""
        return "" if split == self.dev_splits[0] else "_" + split.rsplit("_", 1)[-1][:1] * 2

    def label_value(self, raw: Any, where: str) -> Any:
        """The task's label for a raw file value; an unknown value is a one-line error naming the place."""
        if raw is None or raw == "" or raw == -1:
            return None
        if self.kind == "regression":
            try:
                return float(raw)
            except (TypeError, ValueError):
                raise BortError(f"task {self.name}: label '{raw}' at {where} is not a number") from None
        if self.kind == "multiple_choice":
            with contextlib.suppress(TypeError, ValueError):
                if 0 <= int(raw) < self.num_choices:
                    return int(raw)
            raise BortError(f"task {self.name}: label '{raw}' at {where} is not a choice index "
                            f"0..{self.num_choices - 1}")
        value = canonical(raw)
        if value not in self.labels:
            raise BortError(f"task {self.name}: label '{raw}' at {where} is not one of the task's labels "
                            f"({', '.join(self.labels)})")
        return value

    def label_index(self, label: Any) -> int | float:
        """Head target of a label: class index, float score or choice index."""
        return self.labels.index(label) if self.kind == "classification" else label

    def from_index(self, prediction: int | float) -> Any:
        """A task label from a head prediction (the inverse of `label_index`)."""
        return self.labels[int(prediction)] if self.kind == "classification" else prediction

    # -- reading ---------------------------------------------------------------------------------------
    def file_path(self, split: str, data_dir: str | os.PathLike | None) -> Path:
        if split in self.paths:
            return self.paths[split]
        if split not in self.files:
            raise BortError(f"task {self.name} has no '{split}' split (it has {', '.join(self.files)})")
        if data_dir is None:
            raise BortError(f"task {self.name}: no data folder; pass --data-dir or set {DATA_DIR_ENV}")
        base = Path(data_dir).expanduser()
        for candidate in (base / self.folder / self.files[split], base / Path(self.folder).name / self.files[split],
                          base / self.files[split]):
            if candidate.is_file():
                return candidate
        raise BortError(f"task {self.name}: split file {base / self.folder / self.files[split]} is missing "
                        f"(expected the official {self.benchmark} layout)")

    def load(self, split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
        """The examples of one split, from files when a folder is given (or set), else from the hub."""
        data_dir = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
        if data_dir is None and not self.paths and self.hub is not None:
            return self._load_hub(split)
        path = self.file_path(split, data_dir)
        return [self._example(row, i, f"{path.name} row {i + 1}") for i, row in enumerate(io.read_table(
            path, self.headerless.get(split)))]

    def _example(self, row: dict[str, Any], i: int, where: str, parse: Parser | None = None) -> Example:
        try:
            text, pair, choices = (parse or self.parse)(row)
        except (KeyError, TypeError) as exc:
            raise BortError(f"task {self.name}: {where} lacks field {exc}; is this the right file?") from None
        if text is None:
            raise BortError(f"task {self.name}: {where} has no text")
        label = self.label_value(row.get(self.label_column), where)
        return Example(str(text), None if pair is None else str(pair), label, row.get(self.index_column, i), choices)

    def _load_hub(self, split: str) -> list[Example]:
        try:
            import datasets
        except ImportError:
            raise BortError(f"task {self.name}: pass --data-dir with the official files, or pip install datasets "
                            "to read it from the hub") from None
        name, config = self.hub  # type: ignore[misc]
        hub_split = self.hub_splits.get(split, {"dev": "validation"}.get(split, split))
        try:
            rows = datasets.load_dataset(name, config, split=hub_split)
        except Exception as exc:  # noqa: BLE001 - datasets raises many types; all mean "not available"
            raise BortError(f"task {self.name}: cannot load {name}/{config} [{hub_split}] from the hub "
                            f"({type(exc).__name__}); pass --data-dir with the official files") from None
        out = []
        for i, row in enumerate(map(dict, rows)):
            if self.kind == "classification" and isinstance(row.get("label"), int) and row["label"] >= 0:
                row[self.label_column] = self.labels[row["label"]]
            out.append(self._example(row, i, f"hub {name}/{config} {hub_split} row {i}", self.hub_parse))
        return out


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task under 'benchmark/name' and, unless taken (RTE is in both benchmarks), its bare name; and
    under the names Hugging Face's `datasets` and run_glue.py use (`stsb`, `sst2`, `boolq`, ...)."""
    TASKS[f"{task.benchmark}/{task.name}".lower()] = task
    TASKS.setdefault(task.name.lower(), task)
    if task.hub is not None:
        TASKS.setdefault(f"{task.benchmark}/{task.hub[1]}".lower(), task)
        TASKS.setdefault(task.hub[1].lower(), task)
    return task


def get_task(name: str | Task) -> Task:
    """A registered task by name (case-insensitive); unknown names get the list of known ones."""
    if isinstance(name, Task):
        return name
    _load_builtin()
    task = TASKS.get(str(name).lower())
    if task is None:
        raise BortError(f"unknown task '{name}'; known tasks: {', '.join(list_tasks())} (or their `datasets` "
                        "names: stsb, sst2, ...), or pass --train/--dev files for a custom task")
    return task


def list_tasks() -> list[str]:
    """The shortest unambiguous name of every registered task, GLUE first."""
    _load_builtin()
    return [task.name if TASKS.get(task.name.lower()) is task else f"{task.benchmark}/{task.name}"
            for key, task in TASKS.items() if key == f"{task.benchmark}/{task.name}".lower()]


def _load_builtin() -> None:
    from bort.tasks import glue, superglue  # noqa: F401 - registration happens on import
