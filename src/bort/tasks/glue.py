"""The GLUE tasks, read from the official tsv files (download_glue_data.py layout) or the `glue` hub dataset.

Label strings follow the files; their order follows the hub's class indices, so a head trained on either
source predicts the same names. Test predictions go to `<Task>.tsv` files with `index` and `prediction`.
"""

from __future__ import annotations

from bort.tasks.registry import Task, columns, register_task

BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")
SPLITS = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}


def glue_task(name: str, kind: str, metrics: tuple[str, ...], text: str, pair: str | None, hub_config: str,
              hub_text: str, hub_pair: str | None, labels: tuple[str, ...] = BINARY, **extra) -> Task:
    """A GLUE task whose files sit in glue/<name> and whose test submission is <name>.tsv."""
    options = dict(files=dict(SPLITS), index_column="index", test_splits={"test": f"{name}.tsv"}) | extra
    return register_task(Task(name=name, benchmark="glue", kind=kind, metrics=metrics, labels=labels,
                              folder=f"glue/{name}", parse=columns(text, pair), hub=("glue", hub_config),
                              hub_parse=columns(hub_text, hub_pair), **options))


COLA_FIELDS = ("source", "label", "original_label", "sentence")  # train/dev have no header row; test has one
glue_task("CoLA", "classification", ("matthews_correlation",), "sentence", None, "cola", "sentence", None,
          headerless={"train": COLA_FIELDS, "dev": COLA_FIELDS})
glue_task("SST-2", "classification", ("accuracy",), "sentence", None, "sst2", "sentence", None)
glue_task("MRPC", "classification", ("f1", "accuracy"), "#1 String", "#2 String", "mrpc", "sentence1", "sentence2",
          label_column="Quality")
glue_task("STS-B", "regression", ("pearson", "spearman"), "sentence1", "sentence2", "stsb", "sentence1",
          "sentence2", labels=(), label_column="score")
glue_task("QQP", "classification", ("f1", "accuracy"), "question1", "question2", "qqp", "question1", "question2",
          label_column="is_duplicate", index_column="id")
glue_task("MNLI", "classification", ("accuracy",), "sentence1", "sentence2", "mnli", "premise", "hypothesis",
          labels=("entailment", "neutral", "contradiction"), label_column="gold_label",
          files={"train": "train.tsv", "dev_matched": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv",
                 "test_matched": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv"},
          dev_splits=("dev_matched", "dev_mismatched"),
          test_splits={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
          hub_splits={"dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"})
glue_task("QNLI", "classification", ("accuracy",), "question", "sentence", "qnli", "question", "sentence",
          labels=ENTAILMENT)
glue_task("RTE", "classification", ("accuracy",), "sentence1", "sentence2", "rte", "sentence1", "sentence2",
          labels=ENTAILMENT)
glue_task("WNLI", "classification", ("accuracy",), "sentence1", "sentence2", "wnli", "sentence1", "sentence2")
