"""Measured latency of a model on this machine, cached per hardware, runtime and shape.

Method: eval mode, `torch.inference_mode`, a fixed thread count, warm-up runs, then the median of
timed runs. The cache lives in $BORT_CACHE (default ~/.cache/bort) so a search re-uses measurements.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from bort import io
from bort.families.base import Arch, Family

log = logging.getLogger("bort")


@functools.cache
def hardware_id() -> str:
    """CPU model, logical cores and torch build: what a latency figure is only valid for."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
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


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """`threads` PyTorch threads inside the block (the current count when None), the previous count after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def measure_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 10, warmup: int = 3,
                  threads: int | None = None) -> float:
    """Median latency in ms of one forward pass of `model` on `inputs` (eager PyTorch, inference mode)."""
    model.eval()
    with torch_threads(threads), torch.inference_mode():
        return statistics.median(time_call(lambda: model(**inputs), repeats, warmup))


@contextlib.contextmanager
def others_load() -> Iterator[list[float]]:
    """How many cores other processes kept busy during the block (Linux /proc/stat; nothing elsewhere)."""
    def busy_seconds() -> float:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    found: list[float] = []
    try:
        before, mine, start = busy_seconds(), os.times(), time.perf_counter()
    except (OSError, ValueError, IndexError):
        yield found
        return
    yield found
    wall, now = time.perf_counter() - start, os.times()
    ours = now.user + now.system - mine.user - mine.system
    found.append(round(max(0.0, busy_seconds() - before - ours) / max(wall, 1e-9), 2))


def busy_warning(others: float | None, threads: int) -> str | None:
    """A warning when other processes took cores this measurement needed (they distort every timing)."""
    cpus = os.cpu_count() or 1
    if others is None or others <= max(0.5, cpus - threads + 0.5):
        return None
    return (f"the machine was busy ({others} cores used by other processes, {cpus} cpus, {threads} threads timed); "
            "other processes distort these figures: rerun on a quiet machine")


def cpu_latency(model: torch.nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 10) -> dict[str, object]:
    """The median CPU latency of a model on `inputs`, for metrics and model cards, with a warning when the
    machine was busy (a figure measured beside other jobs can be 50x off)."""
    threads = torch.get_num_threads()
    with others_load() as load:
        ms = measure_model(copy.deepcopy(model).cpu().float(), inputs, repeats=repeats, warmup=3)
    out: dict[str, object] = {"cpu_latency_ms": round(ms, 3), "latency_threads": threads}
    if warning := busy_warning(load[0] if load else None, threads):
        out["latency_warning"] = warning
    return out


class LatencyCache:
    """JSON file of medians keyed by hardware, runtime, family, architecture and shape; only figures measured on a
    quiet machine are kept."""

    def __init__(self, path: str | os.PathLike | None = None):
        root = Path(os.environ.get("BORT_CACHE", Path.home() / ".cache" / "bort"))
        self.path = Path(path) if path else root / "latency.json"
        try:
            self.entries: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}  # a missing or torn cache is only a cache

    def measure(self, family: Family, arch: Arch, batch_size: int = 1, seq_len: int = 128, repeats: int = 10,
                threads: int | None = None) -> float:
        threads = threads or torch.get_num_threads()
        source = json.dumps(family.fingerprint(), sort_keys=True)
        key = (f"{hardware_id()} | {threads} threads | torch-eager | {family.name}:{source} | "
               f"{','.join(map(str, arch))} | b{batch_size} s{seq_len}")
        if key in self.entries:
            return self.entries[key]
        torch.manual_seed(0)
        with others_load() as load:
            ms = measure_model(family.build(arch), family.example_input(arch, batch_size, seq_len), repeats,
                               threads=threads)
        if warning := busy_warning(load[0] if load else None, threads):
            log.warning("latency of %s: %s; not cached", ",".join(map(str, arch)), warning)
            return ms  # a figure taken beside other jobs is used once, never kept for later runs
        self.entries[key] = ms
        io.write_json(self.path, self.entries)
        return ms
