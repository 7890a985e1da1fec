"""The distillation objective shared by the search's surrogate runs and by pre-training."""

from __future__ import annotations

import torch
from torch import nn

from bort.distill.losses import hidden_distillation, logit_distillation
from bort.distill.teacher import Teacher


class DistillationObjective(nn.Module):
    """A student (plus, for hidden-state distillation, a learned projection to the teacher's width) and
    its loss against the teacher's outputs. Only this module's parameters are trained."""

    def __init__(self, student: nn.Module, teacher: Teacher, hidden_loss: str = "mse", temperature: float = 2.0,
                 mlm_weight: float = 0.1, kd_weight: float = 0.5):
        super().__init__()
        self.student = student
        self.uses_logits = teacher.has_mlm_head
        self.hidden_loss, self.temperature = hidden_loss, temperature
        self.mlm_weight, self.kd_weight = mlm_weight, kd_weight
        width = student.config.hidden_size
        self.projection = (nn.Linear(width, teacher.hidden_size) if not self.uses_logits
                           and width != teacher.hidden_size else nn.Identity())

    @staticmethod
    @torch.no_grad()
    def teacher_targets(teacher: Teacher, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (MLM teachers) or last hidden states: what the student is trained to match."""
        out = teacher.model(input_ids=input_ids)
        return out.logits if teacher.has_mlm_head else out.last_hidden_state

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        if self.uses_logits:
            logits = self.student(input_ids=input_ids).logits
            return logit_distillation(logits, targets, labels, self.temperature, self.mlm_weight, self.kd_weight)
        hidden = self.student(input_ids=input_ids).last_hidden_state
        return hidden_distillation(self.projection(hidden), targets, self.hidden_loss)
