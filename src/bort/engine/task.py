"""The task objective: a classifier, regressor or multiple-choice head trained on gold labels, and, given a
teacher's outputs for the same rows, on those too (task distillation)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bort.engine.distillation import hidden_distance, kl_divergence


def layer_pairs(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student, teacher) indices into `hidden_states`: the embeddings to the embeddings, and student layer m to
    teacher layer round(m · L_t / L_s), TinyBERT's uniform mapping (2 of 6 layers: 1 -> 3, 2 -> 6)."""
    return [(0, 0)] + [(m, round(m * teacher_layers / student_layers)) for m in range(1, student_layers + 1)]


class TaskObjective(nn.Module):
    """Cross-entropy on class (or choice) indices, mean squared error on scores. A batch that carries `teacher`
    outputs adds task distillation: loss = α · gold + (1 − α) · T² · KL(teacher ‖ student) on temperature-softened
    logits, or MSE to the teacher's score for regression. With `teacher` (the teacher model) and `hidden_weight`,
    + hidden_weight · the mean, over `layer_pairs`, of the FVU-normalised MSE between the student's states
    (through a learned projection where the widths differ) and the teacher's, on the tokens the mask keeps."""

    def __init__(self, model: nn.Module, regression: bool, alpha: float = 1.0, temperature: float = 1.0,
                 teacher: nn.Module | None = None, hidden_weight: float = 0.0):
        super().__init__()
        self.model, self.regression, self.alpha, self.temperature = model, regression, alpha, temperature
        self.hidden_weight = hidden_weight if teacher is not None else 0.0
        self.__dict__["teacher"] = teacher if self.hidden_weight else None  # not a submodule: neither trained nor saved
        self.projection, self.pairs = None, []
        if self.teacher is not None:
            mine, theirs = model.config, teacher.config
            self.pairs = layer_pairs(mine.num_hidden_layers, theirs.num_hidden_layers)
            if mine.hidden_size != theirs.hidden_size:
                self.projection = nn.Linear(mine.hidden_size, theirs.hidden_size)

    @staticmethod
    def _inputs(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k not in ("labels", "teacher")}

    @torch.no_grad()
    def targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...] | None:
        """The teacher's hidden states at the paired layers, computed live (augmented rows have them too)."""
        if self.teacher is None or "teacher" not in batch:
            return None
        states = self.teacher(**self._inputs(batch), output_hidden_states=True).hidden_states
        return tuple(states[t] for _, t in self.pairs)

    def forward(self, batch: dict[str, Any], targets: Any = None) -> dict[str, torch.Tensor]:
        out = self.model(**self._inputs(batch), output_hidden_states=targets is not None)
        logits, y = out.logits.float(), batch["labels"]
        gold = F.mse_loss(logits[:, 0], y.float()) if self.regression else F.cross_entropy(logits, y)
        if "teacher" not in batch:
            return {"loss": gold}
        soft = batch["teacher"].float()
        kd = F.mse_loss(logits[:, 0], soft) if self.regression else kl_divergence(logits, soft, self.temperature)
        terms = {"loss": self.alpha * gold + (1 - self.alpha) * kd, "gold": gold, "kd": kd}
        if targets is not None:
            mask = batch["attention_mask"].reshape(-1, batch["attention_mask"].shape[-1]).bool()  # choices flattened
            project = self.projection or nn.Identity()
            terms["hidden"] = torch.stack([hidden_distance(project(out.hidden_states[s][mask]), theirs[mask])
                                           for (s, _), theirs in zip(self.pairs, targets, strict=True)]).mean()
            terms["loss"] = terms["loss"] + self.hidden_weight * terms["hidden"]
        return terms
