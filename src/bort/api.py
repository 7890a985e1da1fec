"""The Python API: what the CLI calls and what users script against."""

from __future__ import annotations

import os
from typing import Any

from bort.agora.rounds import agora
from bort.distill.pretrain import pretrain
from bort.extraction import ExtractionResult, extract
from bort.families import Family, parse_arch, resolve_family
from bort.speed.bench import bench
from bort.speed.export import export
from bort.tasks.finetune import finetune

__all__ = ["ExtractionResult", "agora", "bench", "cost", "export", "extract", "finetune", "pretrain",
           "resolve_family"]


def cost(arch: str | tuple[int, ...], family: str | Family = "bert", source: str | os.PathLike | None = None,
         batch_size: int = 1, seq_len: int = 128, measure: bool = False, repeats: int = 10) -> dict[str, Any]:
    """Predicted size and cost of one architecture, without training anything.

    Returns params, effective_params (without embeddings), ops (FLOPs of one forward pass at
    batch_size x seq_len) and, with `measure=True`, the measured median latency_ms on this machine.
    """
    fam = resolve_family(family, source)
    point = parse_arch(fam, arch)
    predicted = fam.cost(point, batch_size, seq_len)
    out: dict[str, Any] = {"family": fam.name, "arch": dict(zip(fam.param_names, point, strict=True)),
                           "params": predicted.params, "effective_params": predicted.effective_params,
                           "ops": predicted.ops, "batch_size": batch_size, "seq_len": seq_len}
    if measure:
        from bort.speed.latency import LatencyCache

        out["latency_ms"] = round(LatencyCache().measure(fam, point, batch_size, seq_len, repeats), 3)
    return out

