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
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from bort import io
from bort.errors import BortError
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


# Calls shorter than this get an untimed call of the same model right before each timed one (see `primed_ms`).
PRIME_BELOW_MS = 1000.0


def interleaved(count: int, round_: int) -> list[int]:
    """The order of `count` models in one round of a side-by-side timing: the start rotates each round, so no
    model always runs first (or right after the same other model), and drift in the machine hits all alike."""
    return [(k + round_) % count for k in range(count)]


def primed_ms(call: Callable[[], object], last_ms: float | None) -> float:
    """Milliseconds of one call inside an interleaved round, after an untimed call of the same model when its
    last call was short (`last_ms` < PRIME_BELOW_MS; None: no priming). The model run before it evicted this
    one's weights from the caches, which a server calling one model back to back never sees (a small int8 model
    fits in the L3 cache)."""
    if last_ms is not None and last_ms < PRIME_BELOW_MS:
        call()
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


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


def runtime_id(runtime: str) -> str:
    """The runtime of a cached latency, with onnxruntime's version for ONNX (its int8 kernels change between
    releases; the torch version is in `hardware_id`)."""
    if runtime == "torch":
        return "torch-eager"
    from bort.speed.export import require_onnx

    require_onnx()  # one line naming the install, not an ImportError
    import onnxruntime

    return f"{runtime} onnxruntime {onnxruntime.__version__}"


@contextlib.contextmanager
def timed_calls(family: Family, archs: list[Arch], batch_size: int, seq_len: int, runtime: str = "torch",
                threads: int | None = None) -> Iterator[list[Callable[[], object]]]:
    """One forward call per architecture (seeded random weights; speed does not depend on them) in `runtime`: eager
    PyTorch, or the ONNX Runtime session `bort export` would ship (fp32, or int8 as `bort bench` quantizes it). A
    speed target is only as good as the runtime it was measured in: a 2-layer student gains less from int8 than its
    12-head source does, so 4x in eager PyTorch was 3.4-3.7x in int8 (benchmarks/RESULTS.md)."""
    if runtime == "torch":
        torch.manual_seed(0)
        models = [family.build(a).eval() for a in archs]
        with torch_threads(threads), torch.inference_mode():
            yield [functools.partial(model, **family.example_input(a, batch_size, seq_len))
                   for model, a in zip(models, archs, strict=True)]
        return
    from bort.families.bert import BertFamily
    from bort.speed.export import cached_export, ort_session, require_onnx
    from bort.speed.models import SpeedModel, example_inputs, input_names

    require_onnx()
    if not isinstance(family, BertFamily):
        raise BortError(f"--latency-runtime {runtime} times ONNX exports of transformers models, not the "
                        f"'{family.name}' family; use --latency-runtime torch")
    calls = []
    with tempfile.TemporaryDirectory(prefix="bort-latency-") as tmp:
        for arch in archs:
            config = family.config(arch)
            model = SpeedModel(",".join(map(str, arch)), "search", config, BertFamily(config), arch, None)
            session = ort_session(cached_export(model, Path(tmp), int8=runtime == "onnx-int8"),
                                  threads or torch.get_num_threads(), spinning=False)
            feed = {n: v.numpy() for n, v in example_inputs(model, batch_size, seq_len).items()
                    if n in input_names(config)}
            calls.append(functools.partial(session.run, None, feed))
        yield calls


def side_by_side(family: Family, archs: list[Arch], batch_size: int = 1, seq_len: int = 128, repeats: int = 40,
                 warmup: int = 3, runtime: str = "torch") -> list[list[float]]:
    """Milliseconds of each architecture in `runtime` (see `timed_calls`) in each of `repeats` rounds, timed
    interleaved as `bort bench` times models. Ratios within a round are what a user measures side by side; ratios
    of two separate (cached) timings are not, as the machine drifts between them. Figures taken on a busy machine
    are logged."""
    times: list[list[float]] = [[] for _ in archs]
    last: list[float | None] = [None for _ in archs]
    with timed_calls(family, archs, batch_size, seq_len, runtime) as calls, others_load() as load:
        for round_ in range(warmup + repeats):
            for i in interleaved(len(calls), round_):
                last[i] = primed_ms(calls[i], last[i] if round_ >= warmup else None)
                if round_ >= warmup:
                    times[i].append(last[i])
    if warning := busy_warning(load[0] if load else None, torch.get_num_threads()):
        log.warning("side-by-side timing: %s", warning)
    return times


def median_bound(values: list[float], quantile: float, resamples: int = 2000) -> float:
    """The `quantile` of the median of `values` over seeded bootstrap resamples: with 0.05, a median at least this
    large has 95% confidence; with 0.95, one at most this large."""
    rng = np.random.default_rng(0)
    data = np.asarray(values, dtype=float)
    medians = np.median(data[rng.integers(0, len(data), (resamples, len(data)))], axis=1)
    return float(np.quantile(medians, quantile))


class LatencyCache:
    """JSON file of medians keyed by hardware, runtime, family, architecture and shape; only figures measured on a
    quiet machine are kept."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else io.cache_root() / "latency.json"
        try:
            self.entries: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}  # a missing or torn cache is only a cache

    def measure(self, family: Family, arch: Arch, batch_size: int = 1, seq_len: int = 128, repeats: int = 10,
                threads: int | None = None, runtime: str = "torch") -> float:
        threads = threads or torch.get_num_threads()
        source = json.dumps(family.fingerprint(), sort_keys=True)
        key = (f"{hardware_id()} | {threads} threads | {runtime_id(runtime)} | {family.name}:{source} | "
               f"{','.join(map(str, arch))} | b{batch_size} s{seq_len}")
        if key in self.entries:
            return self.entries[key]
        with timed_calls(family, [arch], batch_size, seq_len, runtime, threads) as (call,), others_load() as load:
            ms = statistics.median(time_call(call, repeats, warmup=3))
        if warning := busy_warning(load[0] if load else None, threads):
            log.warning("latency of %s: %s; not cached", ",".join(map(str, arch)), warning)
            return ms  # a figure taken beside other jobs is used once, never kept for later runs
        self.entries[key] = ms
        io.write_json(self.path, self.entries)
        return ms
