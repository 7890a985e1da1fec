"""The task objective: a classifier, regressor or multiple-choice head trained on gold labels."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class TaskObjective(nn.Module):
    """Cross-entropy on class (or choice) indices, mean squared error on scores."""

    def __init__(self, model: nn.Module, regression: bool):
        super().__init__()
        self.model, self.regression, self.teacher = model, regression, None

    def targets(self, batch: dict[str, Any]) -> None:
        return None

    def forward(self, batch: dict[str, Any], targets: Any = None) -> dict[str, torch.Tensor]:
        logits, y = self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float(), batch["labels"]
        return {"loss": F.mse_loss(logits[:, 0], y.float()) if self.regression else F.cross_entropy(logits, y)}
