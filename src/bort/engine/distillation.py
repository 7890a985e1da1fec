"""The distillation objective: what `bort pretrain` trains and what the search's surrogate error ê measures.

One definition serves both, so the FPTAS ranks architectures by the loss pre-training will optimise.
- Teacher with an MLM head (BERT, RoBERTa checkpoints), Bort's recipe over the masked positions: mlm_weight · masked-LM
  cross-entropy + kd_weight · T² · KL(teacher ‖ student) between temperature-softened distributions. (The original MXNet
  code fed probabilities where log-probabilities were expected; here both sides are proper log-probabilities.)
- Teacher without one (e.g. a sentence-embedding model): hidden_weight · distance between the student's last hidden
  state, through a learned projection to the teacher's width, and the teacher's (MSE normalised by the teacher's
  variance, so 1.0 = "no better than the mean vector", or cosine distance), plus the cosine distance of the pooled [CLS]
  outputs (so the saved pooler is trained) and mlm_weight · the student's masked-LM cross-entropy.
- attention_weight > 0 adds MiniLMv2 self-attention relations of the last layer, for either teacher.
Vocabulary logits are computed only at the masked positions (15% of the vocabulary-sized work).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bort import io
from bort.config import DistillConfig
from bort.errors import BortError


@dataclass
class Teacher:
    model: nn.Module
    tokenizer: Any
    has_mlm_head: bool
    name: str

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size


def load_teacher(source: str | None = None) -> Teacher:
    """A pretrained teacher in eval mode, frozen; with its MLM head when the checkpoint has one."""
    name = str(source) if source is not None else io.default_source()
    if name in io.PRESETS:
        raise BortError(f"preset '{name}' is a config without weights and cannot teach; pass --teacher with a "
                        "pretrained model folder (the default is the embedded MiniLM)")
    config = io.load_config(name)
    mlm = io.has_mlm_head(config)
    model = io.load_model(name, "masked-lm" if mlm else "base", config=config).requires_grad_(False)
    return Teacher(model=model, tokenizer=io.load_tokenizer(name), has_mlm_head=mlm, name=name)


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) between temperature-softened distributions, averaged over rows."""
    return F.kl_div(F.log_softmax(student_logits.float() / temperature, dim=-1),
                    F.log_softmax(teacher_logits.float() / temperature, dim=-1),
                    log_target=True, reduction="batchmean") * temperature**2


def hidden_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Distance of (projected) student and teacher states [..., width]: FVU-normalised MSE or cosine."""
    student, teacher = student.float(), teacher.float()
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    centred = teacher - teacher.reshape(-1, teacher.shape[-1]).mean(dim=0)
    return (student - teacher).pow(2).sum() / centred.pow(2).sum().clamp_min(1e-12)


def attention_relations(student_qkv: tuple[torch.Tensor, ...], teacher_qkv: tuple[torch.Tensor, ...],
                        relation_heads: int) -> torch.Tensor:
    """MiniLMv2: KL(teacher ‖ student) of softmax(x xᵀ / √d_r) for x = Q, K, V, split into `relation_heads`
    heads of width d_r (neither model's head count), so widths and head counts may differ."""
    def relations(x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        heads = x.float().view(batch, seq, relation_heads, width // relation_heads).transpose(1, 2)
        return F.log_softmax(heads @ heads.transpose(-1, -2) / (width // relation_heads) ** 0.5, dim=-1).flatten(0, 2)

    return torch.stack([F.kl_div(relations(s), relations(t), log_target=True, reduction="batchmean")
                        for s, t in zip(student_qkv, teacher_qkv, strict=True)]).mean()


def mlm_head(model: nn.Module) -> nn.Module:
    for name in ("cls", "lm_head"):
        if hasattr(model, name):
            return getattr(model, name)
    raise BortError(f"{type(model).__name__} has no masked-LM head (cls or lm_head)")


@contextlib.contextmanager
def capture_qkv(model: nn.Module, enabled: bool = True):
    """Collect the last layer's query, key and value projections ([batch, seq, width]) during a forward."""
    found: list[torch.Tensor] = []
    attention = model.base_model.encoder.layer[-1].attention.self
    handles = [getattr(attention, n).register_forward_hook(lambda _m, _i, out: found.append(out))
               for n in ("query", "key", "value")] if enabled else []
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def add_pooler(student: nn.Module) -> None:
    """Give an MLM-shaped student (which transformers builds without one) its base model's pooler, so the saved
    folder loads with AutoModel and nothing is newly initialised."""
    base = student.base_model
    if getattr(base, "pooler", None) is None:
        with torch.device("meta"):
            template = type(base)(student.config)  # only to find the pooler class of this model type
        base.pooler = type(template.pooler)(student.config)
        base.pooler.apply(student._init_weights)


class DistillationObjective(nn.Module):
    """An MLM-shaped student (with a pooler) plus, for hidden-state teachers, a learned projection to the teacher's
    width; returns the loss terms of `config` against the teacher. Only this module is trained.

    `cache` (a dict shared across students) keeps the teacher's encoder outputs per batch key: the search trains many
    candidates on the same batches and pays the teacher once."""

    def __init__(self, student: nn.Module, teacher: Teacher, config: DistillConfig, cache: dict | None = None):
        super().__init__()
        add_pooler(student)
        self.student, self.config, self.cache, self.has_mlm_head = student, config, cache, teacher.has_mlm_head
        self.__dict__["teacher"] = teacher.model  # not a submodule: neither trained nor saved
        self.__dict__["teacher_pooler"] = None if teacher.has_mlm_head else getattr(teacher.model.base_model,
                                                                                    "pooler", None)
        self.projection = None if teacher.has_mlm_head else nn.Linear(student.config.hidden_size, teacher.hidden_size)
        self.relation_heads = math.gcd(teacher.model.config.num_attention_heads, student.config.hidden_size)
        # parameters some steps do not reach (an untrained MLM head, a pooler without a target) need DDP's search
        self.find_unused_parameters = self.teacher_pooler is None or (not self.has_mlm_head and config.mlm_weight == 0)

    @torch.no_grad()
    def targets(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Teacher logits at the masked positions, or its last hidden state and pooled output; Q, K, V if needed."""
        key = batch.get("key")
        if self.cache is not None and key in self.cache:
            hidden, qkv = self.cache[key]
        else:
            with capture_qkv(self.teacher, bool(self.config.attention_weight)) as qkv:
                hidden = self.teacher.base_model(input_ids=batch["input_ids"]).last_hidden_state
            if self.cache is not None:
                self.cache[key] = hidden, tuple(qkv)
        out = {"hidden": hidden, "qkv": tuple(qkv)}
        if self.has_mlm_head:
            out["logits"] = mlm_head(self.teacher)(hidden[batch["labels"] != -100])
        elif self.teacher_pooler is not None:
            out["pooled"] = self.teacher_pooler(hidden)
        return out

    def forward(self, batch: dict[str, Any], targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        config, labels = self.config, batch["labels"]
        masked = labels != -100
        with capture_qkv(self.student, bool(config.attention_weight)) as qkv:
            out = self.student.base_model(input_ids=batch["input_ids"])
        hidden = out.last_hidden_state
        logits = mlm_head(self.student)(hidden[masked]) if self.has_mlm_head or config.mlm_weight else None
        terms: dict[str, torch.Tensor] = {}
        if logits is not None:
            terms["mlm"] = F.cross_entropy(logits.float(), labels[masked])
            terms["accuracy"] = (logits.argmax(-1) == labels[masked]).float().mean().detach()
        loss = config.mlm_weight * terms["mlm"] if logits is not None else 0.0
        if self.has_mlm_head:
            terms["kd"] = kl_divergence(logits, targets["logits"], config.temperature)
            terms["agreement"] = (logits.argmax(-1) == targets["logits"].argmax(-1)).float().mean().detach()
            terms["teacher_accuracy"] = (targets["logits"].argmax(-1) == labels[masked]).float().mean()
            loss = loss + config.kd_weight * terms["kd"]
        else:
            projected = self.projection(hidden)
            terms["hidden"] = hidden_distance(projected, targets["hidden"], config.hidden_loss)
            terms["cosine"] = F.cosine_similarity(projected.float(), targets["hidden"].float(), dim=-1).mean().detach()
            loss = loss + config.hidden_weight * terms["hidden"]
            if "pooled" in targets:  # cosine: a batch holds too few pooled vectors to normalise an MSE by
                terms["pooled"] = hidden_distance(self.projection(out.pooler_output), targets["pooled"], "cosine")
                loss = loss + config.hidden_weight * terms["pooled"]
        if config.attention_weight:
            terms["attention"] = attention_relations(tuple(qkv), targets["qkv"], self.relation_heads)
            loss = loss + config.attention_weight * terms["attention"]
        return {**terms, "loss": loss}
