"""A task teacher: a model already fine-tuned on the task. It gives soft targets for task distillation
(`bort finetune --teacher`) and labels Agora's generated points (`--labeller`); one class, checked against the
task's label set before any work."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from bort import io
from bort.errors import BortError
from bort.tasks.finetune import decide, predict, task_tokenizer
from bort.tasks.registry import Example, Task

GENERIC = re.compile(r"^LABEL_\d+$")


def label_names(config: Any, task: Task, where: str) -> list[Any]:
    """The task label each output index of the model at `where` means; a model built for other labels is an error."""
    archs = " ".join(config.architectures or [])
    if task.kind == "multiple_choice":
        if "ForMultipleChoice" not in archs:
            raise BortError(f"{where} is not a multiple-choice model ({archs or 'no architecture'}); "
                            f"task {task.name} needs one")
        return []
    if task.kind == "regression":
        if config.num_labels != 1:
            raise BortError(f"{where} predicts {config.num_labels} labels; task {task.name} is a "
                            "regression (1 output)")
        return []
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    if "ForSequenceClassification" not in archs:
        raise BortError(f"{where} is not a fine-tuned classifier ({archs or 'no architecture'}); pass a model "
                        "fine-tuned on the task, or name a model to fine-tune first (--teacher-from / --labeller-from)")
    if len(names) != len(task.labels) or (not all(GENERIC.match(n) for n in names)
                                          and set(names) != set(task.labels)):
        raise BortError(f"{where} label set ({', '.join(names)}) differs from task {task.name}'s "
                        f"({', '.join(task.labels)})")
    return list(task.labels) if all(GENERIC.match(n) for n in names) else names


class TaskTeacher:
    """A model fine-tuned on the task: its raw outputs (soft targets) and its labels for any examples."""

    def __init__(self, folder: str | os.PathLike, task: Task, max_seq_len: int = 128, batch_size: int = 64,
                 role: str = "teacher"):
        config = io.load_config(folder)
        names = label_names(config, task, f"{role} {folder}")
        # its output columns in the task's label order: a teacher may order the same labels differently
        self.order = [names.index(label) for label in task.labels] if task.kind == "classification" else None
        kind = "multiple-choice" if task.kind == "multiple_choice" else "classification"
        self.tokenizer = task_tokenizer(folder, max_seq_len)  # its positions and weights, checked before any work
        self.model = io.load_model(folder, kind, config).to(io.device())
        self.task, self.max_seq_len, self.batch_size, self.folder = task, max_seq_len, batch_size, str(folder)

    def outputs(self, examples: list[Example]) -> np.ndarray:
        """Logits (n, classes or choices) in the task's label order, or scores (n,) for regression: the soft
        targets of distillation."""
        out = predict(self.model, self.tokenizer, self.task, examples, self.max_seq_len, self.batch_size)
        return out[:, self.order] if self.order is not None else out

    def labels_of(self, outputs: np.ndarray) -> list[Any]:
        """The task labels its raw outputs (from `outputs`) mean."""
        preds = decide(self.task, outputs)
        if self.task.kind == "classification":
            return [self.task.labels[int(p)] for p in preds]
        return [int(p) for p in preds] if self.task.kind == "multiple_choice" else [float(p) for p in preds]
