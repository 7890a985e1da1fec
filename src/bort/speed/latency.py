"""Measured latency of a model on this machine, cached per hardware, runtime and shape.

Method: eval mode, `torch.inference_mode`, a fixed thread count, warm-up runs, then the median of
timed runs. The cache lives in $BORT_CACHE (default ~/.cache/bort) so a search re-uses measurements.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bort.families.base import Arch, Family


def hardware_id() -> str:
    """CPU model, logical cores and torch build: what a latency figure is only valid for."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} | {os.cpu_count()} cpus | torch {torch.__version__}"


def time_call(fn: Callable[[], object], repeats: int = 10, warmup: int = 3) -> list[float]:
    """Milliseconds of `repeats` calls of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 10, warmup: int = 3,
                  threads: int | None = None) -> float:
    """Median latency in ms of one forward pass of `model` on `inputs` (eager PyTorch, inference mode)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    model.eval()
    try:
        with torch.inference_mode():
            return statistics.median(time_call(lambda: model(**inputs), repeats, warmup))
    finally:
        torch.set_num_threads(previous)


class LatencyCache:
    """JSON file of medians keyed by hardware, runtime, family, architecture and shape."""

    def __init__(self, path: str | os.PathLike | None = None):
        root = Path(os.environ.get("BORT_CACHE", Path.home() / ".cache" / "bort"))
        self.path = Path(path) if path else root / "latency.json"
        try:
            self.entries: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def measure(self, family: Family, arch: Arch, batch_size: int = 1, seq_len: int = 128, repeats: int = 10,
                threads: int | None = None) -> float:
        threads = threads or torch.get_num_threads()
        source = getattr(family, "source_config", None)
        source_key = f"{source.model_type}/{source.vocab_size}" if source is not None else ""
        key = (f"{hardware_id()} | {threads} threads | torch-eager | {family.name}:{source_key} | "
               f"{','.join(map(str, arch))} | b{batch_size} s{seq_len}")
        if key not in self.entries:
            torch.manual_seed(0)
            model = family.build(arch)
            self.entries[key] = measure_model(model, family.example_input(arch, batch_size, seq_len), repeats,
                                              threads=threads)
            self._save()
        return self.entries[key]

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.entries, indent=0, sort_keys=True))
        os.replace(tmp, self.path)

