"""The SuperGLUE tasks that fit a sequence classifier or multiple choice, from the official jsonl files
(train/val/test.jsonl) or the `super_glue` hub dataset. Test predictions go to `<Task>.jsonl` files of
{"idx", "label"}. MultiRC and ReCoRD (answer spans and entity lists per passage) do not fit these heads.
"""

from __future__ import annotations

from typing import Any

from bort.tasks.registry import Task, columns, register_task

BOOLEAN = ("false", "true")  # JSON booleans, in the hub's class order
SPLITS = {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl"}


def superglue_task(name: str, kind: str, metrics: tuple[str, ...], parse, labels: tuple[str, ...] = BOOLEAN,
                   **extra) -> Task:
    """A SuperGLUE task in superglue/<name>; the hub rows share the jsonl field names."""
    return register_task(Task(name=name, benchmark="superglue", kind=kind, metrics=metrics, labels=labels,
                              folder=f"superglue/{name}", files=dict(SPLITS), parse=parse,
                              test_splits={"test": f"{name}.jsonl"}, hub=("super_glue", name.lower()),
                              **extra))


def copa(row: dict[str, Any]) -> tuple[str, None, tuple[str, ...]]:
    """COPA as multiple choice: the premise with its question, then each alternative."""
    question = "What was the cause?" if row["question"] == "cause" else "What happened as a result?"
    return f"{row['premise']} {question}", None, (row["choice1"], row["choice2"])


def wic(row: dict[str, Any]) -> tuple[str, str, None]:
    """WiC as a sentence pair, the target word first (as in BERT's SuperGLUE baselines)."""
    return f"{row['word']}: {row['sentence1']}", row["sentence2"], None


def wsc(row: dict[str, Any]) -> tuple[str, str, None]:
    """WSC as a pair: the text, and the question whether the pronoun refers to the candidate."""
    target = row.get("target", row)
    return row["text"], f"Does '{target['span2_text']}' refer to '{target['span1_text']}'?", None


superglue_task("BoolQ", "classification", ("accuracy",), columns("question", "passage"))
superglue_task("CB", "classification", ("accuracy", "macro_f1"), columns("premise", "hypothesis"),
               labels=("entailment", "contradiction", "neutral"))
superglue_task("COPA", "multiple_choice", ("accuracy",), copa, labels=(), num_choices=2)
superglue_task("RTE", "classification", ("accuracy",), columns("premise", "hypothesis"),
               labels=("entailment", "not_entailment"))
superglue_task("WiC", "classification", ("accuracy",), wic)
superglue_task("WSC", "classification", ("accuracy",), wsc)
