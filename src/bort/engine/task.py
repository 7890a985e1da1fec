"""The task objective: a classifier, regressor or multiple-choice head trained on gold labels, and, given a
teacher's outputs for the same rows, on those too (task distillation)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bort.engine.distillation import kl_divergence


class TaskObjective(nn.Module):
    """Cross-entropy on class (or choice) indices, mean squared error on scores. A batch that carries `teacher`
    outputs adds task distillation: loss = α · gold + (1 − α) · T² · KL(teacher ‖ student) on temperature-softened
    logits, or MSE to the teacher's score for regression."""

    def __init__(self, model: nn.Module, regression: bool, alpha: float = 1.0, temperature: float = 1.0):
        super().__init__()
        self.model, self.regression, self.teacher = model, regression, None  # teacher outputs come in the batch
        self.alpha, self.temperature = alpha, temperature

    def targets(self, batch: dict[str, Any]) -> None:
        return None

    def forward(self, batch: dict[str, Any], targets: Any = None) -> dict[str, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "teacher")}
        logits, y = self.model(**inputs).logits.float(), batch["labels"]
        gold = F.mse_loss(logits[:, 0], y.float()) if self.regression else F.cross_entropy(logits, y)
        if "teacher" not in batch:
            return {"loss": gold}
        soft = batch["teacher"].float()
        kd = F.mse_loss(logits[:, 0], soft) if self.regression else kl_divergence(logits, soft, self.temperature)
        return {"loss": self.alpha * gold + (1 - self.alpha) * kd, "gold": gold, "kd": kd}
