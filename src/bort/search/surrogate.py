"""Surrogate error ê(ξ): a candidate's held-out distillation loss after a bounded number of steps.

No candidate is trained to convergence. Every candidate sees the same batches in the same order
(common random numbers), so differences in ê come from the architecture and Θ, not from the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from transformers import AutoModel, AutoModelForMaskedLM, get_linear_schedule_with_warmup

from bort.distill.data import mask_tokens
from bort.distill.objective import DistillationObjective
from bort.distill.teacher import Teacher
from bort.errors import BortError
from bort.families.base import Arch, Family

# Training hyperparameters of a surrogate run; Θ is a list of these (missing keys take these defaults).
THETA_DEFAULTS = {"lr": 1e-3, "warmup": 0.1, "weight_decay": 0.01}

Surrogate = Callable[[Arch, Mapping[str, float], int, int], float]
"""(arch, theta, steps, seed) -> surrogate error ê > 0."""


def complete_theta(theta: Mapping[str, float]) -> dict[str, float]:
    unknown = set(theta) - set(THETA_DEFAULTS)
    if unknown:
        raise BortError(f"unknown training hyperparameter(s) {sorted(unknown)} in Θ; known: {sorted(THETA_DEFAULTS)}")
    return {**THETA_DEFAULTS, **{k: float(v) for k, v in theta.items()}}


def train_steps(module: nn.Module, loss_of_step: Callable[[int], torch.Tensor], theta: Mapping[str, float],
                steps: int) -> None:
    """AdamW with linear warm-up and decay, gradients clipped at 1; a non-finite loss stops the run."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=theta["lr"], weight_decay=theta["weight_decay"])
    schedule = get_linear_schedule_with_warmup(optimizer, math.ceil(theta["warmup"] * steps), steps)
    module.train()
    for step in range(steps):
        loss = loss_of_step(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    module.eval()


class DistillationSurrogate:
    """ê for the `bert` family: distil each candidate from the teacher on packed corpus sequences.

    With a hidden-state teacher the student only ever sees the corpus' own tokens, so it is built with a
    vocabulary compacted to those tokens: the same training, without initialising and updating tens of
    thousands of embedding rows that never receive a gradient. (An MLM teacher needs the full vocabulary.)
    """

    def __init__(self, family, teacher: Teacher, sequences: torch.Tensor, batch_size: int = 8,
                 eval_sequences: int = 32, hidden_loss: str = "cosine", mask_prob: float = 0.15, seed: int = 0,
                 source_model: nn.Module | None = None):
        if len(sequences) < eval_sequences + batch_size:
            raise BortError(f"the corpus gives only {len(sequences)} sequences; need at least "
                            f"{eval_sequences + batch_size} (more text, or a shorter --seq-len)")
        self.family, self.teacher, self.batch_size = family, teacher, batch_size
        self.hidden_loss = hidden_loss
        order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(seed))
        sequences = sequences[order]
        self.eval_ids, self.train_ids = sequences[:eval_sequences], sequences[eval_sequences:]
        self.labels: dict[int, torch.Tensor] = {}
        if teacher.has_mlm_head:
            generator = torch.Generator().manual_seed(seed + 1)
            self.train_ids, self.train_labels = mask_tokens(self.train_ids, teacher.tokenizer, mask_prob, generator)
            self.eval_ids, self.eval_labels = mask_tokens(self.eval_ids, teacher.tokenizer, mask_prob, generator)
            self.vocab_map = None
        else:
            seen = torch.unique(sequences)
            self.vocab_map = torch.zeros(int(seen.max()) + 1, dtype=torch.long)
            self.vocab_map[seen] = torch.arange(len(seen))
            self.compact_vocab_size = len(seen)
            self._seen = seen
        self._targets: dict[int, torch.Tensor] = {}
        self.source_model = source_model

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = torch.arange(step * self.batch_size, (step + 1) * self.batch_size) % len(self.train_ids)
        labels = self.train_labels[rows] if self.teacher.has_mlm_head else None
        return self.train_ids[rows], labels

    def _target(self, key: int, input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher outputs, cached per batch for hidden states (small), recomputed for logits (vocab-sized)."""
        if self.teacher.has_mlm_head:
            return DistillationObjective.teacher_targets(self.teacher, input_ids)
        if key not in self._targets:
            self._targets[key] = DistillationObjective.teacher_targets(self.teacher, input_ids)
        return self._targets[key]

    def student(self, arch: Arch) -> tuple[nn.Module, list[int] | None]:
        """A fresh student for `arch` and, when it is sliced from the source (DynaBERT-style), the hidden
        units the slice kept (the projection to the teacher then starts as the slice's inverse)."""
        config = self.family.config(arch)
        if self.teacher.has_mlm_head:
            model = AutoModelForMaskedLM.from_config(config)
        else:
            if self.vocab_map is not None and self.source_model is None:
                config.vocab_size = self.compact_vocab_size  # nothing to slice: build the compact table directly
            model = AutoModel.from_config(config, add_pooling_layer=False)
        if self.source_model is None:
            return model, None
        from bort.distill.init import slice_into

        hidden_index = slice_into(model, self.source_model)["hidden_index"]
        if self.vocab_map is not None:  # compact row i is the corpus' i-th distinct token id
            rows = model.get_input_embeddings().weight[self._seen].detach().clone()
            model.set_input_embeddings(nn.Embedding.from_pretrained(rows, freeze=False))
        return model, hidden_index

    def _student_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids if self.vocab_map is None else self.vocab_map[input_ids]

    def __call__(self, arch: Arch, theta: Mapping[str, float], steps: int, seed: int) -> float:
        torch.manual_seed(seed)
        student, hidden_index = self.student(arch)
        objective = DistillationObjective(student, self.teacher, hidden_loss=self.hidden_loss)
        if hidden_index is not None and self.source_model is self.teacher.model:
            from bort.distill.init import unslice_projection

            unslice_projection(objective.projection, hidden_index)

        def loss_of_step(step: int) -> torch.Tensor:
            ids, labels = self._batch(step)
            return objective(self._student_ids(ids), self._target(step, ids), labels)["loss"]

        train_steps(objective, loss_of_step, complete_theta(theta), steps)
        return self.evaluate(objective)

    @torch.no_grad()
    def evaluate(self, objective: DistillationObjective) -> float:
        total = 0.0
        chunks = list(range(0, len(self.eval_ids), self.batch_size))
        for start in chunks:
            ids = self.eval_ids[start:start + self.batch_size]
            labels = self.eval_labels[start:start + self.batch_size] if self.teacher.has_mlm_head else None
            total += float(objective(self._student_ids(ids), self._target(-1 - start, ids), labels)["loss"])
        return total / len(chunks)


class ToySurrogate:
    """ê for the `mlp` family: regress a fixed random teacher (the maximum point) on Gaussian inputs."""

    def __init__(self, family: Family, batch_size: int = 32, eval_rows: int = 256, seed: int = 0):
        self.family, self.batch_size = family, batch_size
        torch.manual_seed(seed)
        self.teacher = family.build(family.maximum()).eval().requires_grad_(False)
        width = family.maximum()[2]
        generator = torch.Generator().manual_seed(seed + 1)
        self.eval_x = torch.randn(eval_rows, width, generator=generator)
        self.eval_y = self.teacher(self.eval_x)
        self.seed = seed

    def _inputs(self, step: int, width: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + step)
        return torch.randn(self.batch_size, width, generator=generator)

    def __call__(self, arch: Arch, theta: Mapping[str, float], steps: int, seed: int) -> float:
        torch.manual_seed(seed)
        student = self.family.build(arch)
        width = self.eval_x.shape[1]
        if arch[2] != width or arch[4] != self.eval_y.shape[1]:
            raise BortError("the toy surrogate needs candidates with the maximum point's b and d")

        def loss_of_step(step: int) -> torch.Tensor:
            x = self._inputs(step, width)
            return nn.functional.mse_loss(student(x), self.teacher(x))

        train_steps(student, loss_of_step, complete_theta(theta), steps)
        with torch.no_grad():
            return float(nn.functional.mse_loss(student(self.eval_x), self.eval_y))
