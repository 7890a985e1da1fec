"""Distillation losses.

Logits (teacher with an MLM head), Bort's recipe: 0.1 * masked-LM cross-entropy + 0.5 * T^2 * KL(teacher
|| student) between temperature-softened distributions over masked positions. The original MXNet code
fed probabilities where log-probabilities were expected; here both sides are proper log-probabilities.

Hidden states (teacher without one): the student's last hidden state, projected to the teacher's width,
against the teacher's: MSE normalised by the teacher's variance (the fraction of variance unexplained,
so 1.0 means "no better than the mean vector") or cosine distance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                       temperature: float = 2.0, mlm_weight: float = 0.1, kd_weight: float = 0.5
                       ) -> dict[str, torch.Tensor]:
    """Bort's loss over the masked positions (labels != -100); returns each term and the total."""
    masked = labels != -100
    student, teacher = student_logits[masked], teacher_logits[masked]
    mlm = F.cross_entropy(student.float(), labels[masked])
    kd = F.kl_div(F.log_softmax(student.float() / temperature, dim=-1),
                  F.log_softmax(teacher.float() / temperature, dim=-1),
                  log_target=True, reduction="batchmean") * temperature**2
    return {"loss": mlm_weight * mlm + kd_weight * kd, "mlm": mlm, "kd": kd}


def hidden_distillation(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, kind: str = "mse"
                        ) -> dict[str, torch.Tensor]:
    """Distance between (already projected) student and teacher hidden states, shape [batch, seq, width]."""
    student, teacher = student_hidden.float(), teacher_hidden.float()
    if kind == "mse":
        centred = teacher - teacher.mean(dim=(0, 1), keepdim=True)
        value = (student - teacher).pow(2).sum() / centred.pow(2).sum().clamp_min(1e-12)
    elif kind == "cosine":
        value = (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    else:
        raise ValueError(f"unknown hidden-state loss '{kind}'; use 'mse' or 'cosine'")
    return {"loss": value, "hidden": value}


def attention_relation_distillation(student_qkv: tuple[torch.Tensor, ...],
                                    teacher_qkv: tuple[torch.Tensor, ...], relation_heads: int
                                    ) -> dict[str, torch.Tensor]:
    """MiniLMv2 self-attention relations: KL(teacher || student) of softmax(x xᵀ / sqrt(d_r)) for x = Q, K, V.

    Each [batch, seq, width] projection is split into `relation_heads` heads of width d_r, which need
    not equal either model's attention heads, so student and teacher may differ in width and head
    count (the relation matrices are [seq, seq] either way). The KL is averaged over batch, relation
    heads and query positions, then over Q, K and V.
    """
    terms = []
    for student, teacher in zip(student_qkv, teacher_qkv, strict=True):
        relations = []
        for x in (student.float(), teacher.float()):
            batch, seq, width = x.shape
            if width % relation_heads:
                raise ValueError(f"width {width} is not divisible by {relation_heads} relation heads")
            heads = x.view(batch, seq, relation_heads, width // relation_heads).transpose(1, 2)
            scores = heads @ heads.transpose(-1, -2) / (width // relation_heads) ** 0.5
            relations.append(F.log_softmax(scores, dim=-1))
        log_student, log_teacher = relations
        terms.append(F.kl_div(log_student.flatten(0, 2), log_teacher.flatten(0, 2), log_target=True,
                              reduction="batchmean"))
    value = torch.stack(terms).mean()
    return {"loss": value, "attention": value}
