"""The Python API: one function per step, the same names everywhere, a result object from each.

Every keyword option is a field of the step's config dataclass in `bort.config` (the CLI's flags are the same
names with dashes), so defaults and validity rules live in one place; `config=` passes a whole one.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bort import config as cfg
from bort import io
from bort.distill.pretrain import PretrainResult
from bort.distill.pretrain import pretrain as run_pretrain
from bort.families import Family, parse_arch, resolve_family
from bort.families import register_family as _register_family
from bort.families.base import check_fits
from bort.pipeline import RunResult
from bort.pipeline import run as run_pipeline
from bort.search.extraction import ExtractionResult
from bort.search.extraction import extract as run_extract
from bort.search.surrogate import Surrogate, register_surrogate
from bort.speed.bench import BenchResult
from bort.speed.bench import bench as run_bench
from bort.speed.latency import LatencyCache

__all__ = ["BenchResult", "CostResult", "ExportResult", "ExtractionResult", "PretrainResult", "RunResult", "TaskResult",
           "agora", "bench", "cost", "export", "extract", "finetune", "pretrain", "register_family", "run"]


def _options(cls: type[cfg.Options], config: cfg.Options | None, given: dict[str, Any], **options: Any) -> Any:
    """`config` (or the defaults) with the given keywords on top; None means "not given" for the positionals."""
    given = {k: str(v) if isinstance(v, os.PathLike) else v for k, v in given.items() if v is not None}
    return cfg.make(cls, **{**(config.to_dict() if config is not None else {}), **options, **given})


@dataclass
class CostResult:
    family: str
    arch: dict[str, int]
    params: int
    effective_params: int  # without embeddings
    ops: int  # FLOPs of one forward pass at batch_size x seq_len
    batch_size: int
    seq_len: int
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TaskResult:
    """What `finetune`/`agora` wrote; `summary` is what <output>/metrics.json holds (on every process)."""

    output: Path
    summary: dict[str, Any]

    @property
    def best_seed(self) -> int:
        return self.summary["best_seed"]

    def to_dict(self) -> dict[str, Any]:
        return self.summary


@dataclass
class ExportResult:
    output: Path
    report: dict[str, Any]  # what export_report.json holds

    def to_dict(self) -> dict[str, Any]:
        return self.report


def run(source: str | os.PathLike | None, task: str, output: str | os.PathLike, *,
        config: cfg.PipelineConfig | None = None, **options: Any) -> RunResult:
    """`bort run`: teacher, search for the target, pre-training, task distillation, ONNX and a report, resumable."""
    return run_pipeline(_options(cfg.PipelineConfig, config, {"source": source, "task": task, "output": output},
                                 **options))


def register_family(name: str, factory, surrogate=None) -> None:
    """Make `factory(**options)` available as family `name`; `surrogate(family, config)` builds its ê."""
    _register_family(name, factory)
    if surrogate is not None:
        register_surrogate(name, surrogate)


def cost(arch: str | tuple[int, ...], family: str | Family = "bert", source: str | os.PathLike | None = None, *,
         config: cfg.CostConfig | None = None, **options: Any) -> CostResult:
    """Predicted size and operation count of one architecture, without training anything; with
    `measure=True`, the measured median latency on this machine too."""
    settings = _options(cfg.CostConfig, config, {"arch": ",".join(map(str, arch)) if isinstance(arch, tuple) else arch,
                                                 "source": source}, **options)
    fam = resolve_family(family, settings.source)
    point = parse_arch(fam, settings.arch)
    predicted = fam.cost(point, settings.batch_size, settings.seq_len)
    result = CostResult(fam.name, dict(zip(fam.param_names, point, strict=True)), predicted.params,
                        predicted.effective_params, predicted.ops, settings.batch_size, settings.seq_len)
    if settings.measure:
        check_fits(fam, point, 4, "run")
        result.latency_ms = round(LatencyCache().measure(fam, point, settings.batch_size, settings.seq_len,
                                                         settings.repeats), 3)
    return result


def extract(source: str | os.PathLike | None = None, *, family: str | Family | None = None,
            surrogate: Surrogate | None = None, config: cfg.ExtractConfig | None = None,
            **options: Any) -> ExtractionResult:
    """Find the W-optimal sub-architecture of `source` (default: the embedded MiniLM) and write the results;
    `family` may be a Family instance, `surrogate` any callable (arch, theta, steps, seed) -> ê > 0."""
    instance = family if family is not None and not isinstance(family, str) else None
    settings = _options(cfg.ExtractConfig, config, {"source": source, "family": family if instance is None else
                                                    instance.name}, **options)
    return run_extract(settings, instance, surrogate)


def pretrain(arch: str | os.PathLike | tuple[int, ...], output: str | os.PathLike, *,
             config: cfg.PretrainConfig | None = None, **options: Any) -> PretrainResult:
    """Distil `arch` (a chosen/ folder, a config.json, or D,A,H,I) from the teacher; a stock folder in `output`."""
    arch = ",".join(map(str, arch)) if isinstance(arch, tuple | list) else arch
    return run_pretrain(_options(cfg.PretrainConfig, config, {"arch": arch, "output": output}, **options))


def finetune(model: str | os.PathLike | None, task: str, output: str | os.PathLike, *,
             config: cfg.FinetuneConfig | None = None, **options: Any) -> TaskResult:
    """Fine-tune `model` (default: the embedded MiniLM) on `task` once per seed; official-dev metrics."""
    from bort.tasks.finetune import finetune as run

    settings = _options(cfg.FinetuneConfig, config, {"model": model, "task": task, "output": output}, **options)
    return TaskResult(Path(output), io.broadcast(run(settings)))


def agora(model: str | os.PathLike | None, task: str, output: str | os.PathLike, *,
          config: cfg.AgoraConfig | None = None, **options: Any) -> TaskResult:
    """Agora fine-tuning of `model` on `task` (one run per seed); `compare=True` adds plain fine-tuning."""
    from bort.agora.rounds import agora as run

    settings = _options(cfg.AgoraConfig, config, {"model": model, "task": task, "output": output}, **options)
    return TaskResult(Path(output), io.broadcast(run(settings)))


def bench(models: list[str | os.PathLike], *, json_path: str | os.PathLike | None = None, progress: bool = True,
          config: cfg.BenchConfig | None = None, **options: Any) -> BenchResult:
    """Time every model x runtime x shape side by side; `json_path` gets the records."""
    settings = _options(cfg.BenchConfig, config, {"models": [str(m) for m in models]}, **options)
    return run_bench(settings, json_path, progress)


def export(model: str | os.PathLike, output: str | os.PathLike, *, config: cfg.ExportConfig | None = None,
           **options: Any) -> ExportResult:
    """ONNX (optionally int8) of `model` in `output`, checked against PyTorch."""
    from bort.speed.export import export as run

    settings = _options(cfg.ExportConfig, config, {"model": model, "output": output}, **options)
    return ExportResult(Path(settings.output), run(settings))
