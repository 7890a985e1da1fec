"""Surrogate error ê(ξ): a candidate's held-out loss after a bounded number of training steps.

No candidate is trained to convergence. Every candidate sees the same batches in the same order (common random
numbers), so differences in ê come from the architecture and Θ, not from the data. A family plugs in its own
surrogate with `register_surrogate`; `bort.register_family(name, factory, surrogate=...)` does both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bort.config import ExtractConfig, TrainConfig
from bort.distill.data import BatchPlan, cached_sequences, check_corpus
from bort.distill.init import slicing_source, student_objective
from bort.engine.distillation import Teacher, load_teacher
from bort.engine.loop import Engine
from bort.errors import BortError
from bort.families.base import Arch, Family
from bort.search.fptas import steps_for_epsilon

Surrogate = Callable[[Arch, Mapping[str, float], int, int], float]
"""(arch, theta, steps, seed) -> surrogate error ê > 0; it may raise NonFiniteLoss when training diverges."""

THETA_KEYS = ("lr", "warmup", "weight_decay")  # what Θ varies in a surrogate run
EVAL_SEQUENCES = 32
_SURROGATES: dict[str, Callable[[Family, ExtractConfig], Surrogate]] = {}


def register_surrogate(family: str, factory: Callable[[Family, ExtractConfig], Surrogate]) -> None:
    """`factory(family, config)` builds the default ê of family `family` for `bort extract`."""
    _SURROGATES[family] = factory


def default_surrogate(family: Family, config: ExtractConfig) -> Surrogate:
    if family.name not in _SURROGATES:
        raise BortError(f"family '{family.name}' has no surrogate; register one with bort.register_family(..., "
                        "surrogate=...) or pass surrogate=callable to bort.extract")
    return _SURROGATES[family.name](family, config)


def _short_run(objective: nn.Module, batches: Any, theta: Mapping[str, float], steps: int, seed: int,
               config: ExtractConfig) -> float:
    """Train `objective` for `steps` with the engine (in this process only), then its held-out loss."""
    train = TrainConfig(max_steps=steps, batch_size=config.batch_size, seed=seed, log_every=steps, eval_every=0,
                        save_every=0, mixed_precision=config.mixed_precision, **theta)
    engine = Engine(objective, batches, train, eval_batches=batches.eval_batches, local=True, progress=False)
    engine.run()
    return engine.evaluate()["loss"]


class DistillationSurrogate:
    """ê for the `bert` family: each candidate is distilled exactly as `bort pretrain` would train it (the same
    objective, learned projection, masking and engine) for `steps` steps, and scored on held-out rows."""

    def __init__(self, family: Family, teacher: Teacher, rows: Any, config: ExtractConfig,
                 source_model: nn.Module | None = None, eval_sequences: int = EVAL_SEQUENCES):
        if len(rows) < eval_sequences + config.batch_size:
            raise BortError(f"the corpus gives only {len(rows)} sequences; need at least "
                            f"{eval_sequences + config.batch_size} (more text, or a shorter --max-seq-len)")
        self.family, self.teacher, self.config, self.source_model = family, teacher, config, source_model
        self.plan = BatchPlan(rows, teacher.tokenizer, config.batch_size, config.mask_prob, config.seed, eval_sequences)
        self.cache: dict = {}  # the teacher's outputs per batch, shared by every candidate

    @classmethod
    def build(cls, family: Family, config: ExtractConfig) -> DistillationSurrogate:
        """Teacher (default: the source), corpus rows (enough for the 4x-budget check without repeating data)."""
        check_corpus(config.corpus)
        teacher = load_teacher(config.teacher if config.teacher is not None else config.source)
        config.check_weights(teacher.has_mlm_head)
        if len(teacher.tokenizer) > family.source_config.vocab_size:
            raise BortError(f"the teacher's tokenizer has {len(teacher.tokenizer)} tokens but the source's vocabulary "
                            f"has {family.source_config.vocab_size}; use a teacher with the source's vocabulary")
        if config.max_seq_len > family.max_seq_len:
            raise BortError(f"--max-seq-len {config.max_seq_len} exceeds the source's maximum {family.max_seq_len}")
        n = config.steps or steps_for_epsilon(config.epsilon)
        rows = cached_sequences(config.corpus, teacher.tokenizer, config.max_seq_len,
                                max_sequences=4 * n * config.batch_size + EVAL_SEQUENCES)
        return cls(family, teacher, rows, config, slicing_source(config, config.source, teacher))

    @property
    def teacher_name(self) -> str:
        return self.teacher.name

    def __call__(self, arch: Arch, theta: Mapping[str, float], steps: int, seed: int) -> float:
        objective, _ = student_objective(self.family.config(arch), self.teacher, self.config, seed,
                                         self.source_model, self.cache)
        return _short_run(objective, self.plan, theta, steps, seed, self.config)


class _Regression(nn.Module):
    """The toy objective: the student regresses a fixed teacher's outputs."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.student = student
        self.__dict__["teacher"] = teacher

    @torch.no_grad()
    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.teacher(batch["x"])

    def forward(self, batch: dict[str, Any], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.student(batch["x"]), targets)}


class ToySurrogate:
    """ê for the `mlp` family: regress a fixed random teacher (the maximum point) on Gaussian inputs."""

    def __init__(self, family: Family, config: ExtractConfig | None = None, batch_size: int = 32, eval_rows: int = 256):
        self.family, self.config = family, config or ExtractConfig(family="mlp")
        self.batch_size, self.seed, self.width = batch_size, self.config.seed, family.maximum()[2]
        torch.manual_seed(self.seed)
        self.teacher = family.build(family.maximum()).eval().requires_grad_(False)
        self.eval_x = torch.randn(eval_rows, self.width, generator=torch.Generator().manual_seed(self.seed + 1))

    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + step)
        return {"x": torch.randn(self.batch_size, self.width, generator=generator)}

    def eval_batches(self, rank: int, world: int):
        yield {"x": self.eval_x}

    def __call__(self, arch: Arch, theta: Mapping[str, float], steps: int, seed: int) -> float:
        if arch[2] != self.width or arch[4] != self.family.maximum()[4]:
            raise BortError("the toy surrogate needs candidates with the maximum point's b and d")
        torch.manual_seed(seed)
        return _short_run(_Regression(self.family.build(arch), self.teacher), self, theta, steps, seed, self.config)


register_surrogate("bert", DistillationSurrogate.build)
register_surrogate("mlp", ToySurrogate)
