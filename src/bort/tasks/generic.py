"""A task from the user's own CSV/JSONL/TSV files, with a column mapping (text, optional pair, label)."""

from __future__ import annotations

import os
from pathlib import Path

from bort import io
from bort.errors import BortError
from bort.tasks.registry import Task, canonical, columns


def file_task(train: str | os.PathLike, dev: str | os.PathLike | None = None, test: str | os.PathLike | None = None,
              text_column: str = "text", pair_column: str | None = None, label_column: str = "label",
              kind: str = "classification", labels: list[str] | None = None, name: str = "custom") -> Task:
    """A custom task; classification labels default to the sorted label values found in the train file."""
    paths = {split: Path(p).expanduser() for split, p in (("train", train), ("dev", dev), ("test", test)) if p}
    for split, path in paths.items():
        if not path.is_file():
            raise BortError(f"custom task: {split} file {path} does not exist")
    if kind == "classification" and not labels:
        rows = io.read_table(paths["train"])
        if rows and label_column not in rows[0]:
            raise BortError(f"custom task: {paths['train']} has no column '{label_column}' "
                            f"(columns: {', '.join(rows[0])}); pass --label-column")
        labels = sorted({canonical(r[label_column]) for r in rows if r.get(label_column) not in (None, "")})
    metrics = {"classification": ("accuracy", "macro_f1"), "regression": ("pearson", "spearman")}.get(kind)
    if metrics is None:
        raise BortError(f"custom task: kind must be classification or regression, not '{kind}'")
    return Task(name=name, benchmark="custom", kind=kind, metrics=metrics, labels=tuple(labels or ()),
                parse=columns(text_column, pair_column), label_column=label_column, paths=paths,
                files={split: p.name for split, p in paths.items()},
                test_splits={"test": f"{name}.jsonl"} if "test" in paths else {})
