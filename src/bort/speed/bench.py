"""Side-by-side inference benchmark of several models over runtimes, batch sizes and sequence lengths.

Why it is built this way: a speed claim ("20x faster than BERT-large") is only as good as its method.
Every model runs in eval and inference mode with the same fixed thread count, after warm-up, and the
timed runs are interleaved round-robin across all model x runtime cells of a shape, so drift in the
machine (other load, thermal state) hits every cell alike. Interleaving alone would time every call
with the caches full of the previous model's data, which a server calling one model back to back never
sees (a small int8 model fits in the L3 cache), so a short call is primed by an untimed call of the
same cell right before it. We report median and p90, and relate the achieved GFLOP/s (analytic ops
from the family's cost model) to this machine's matrix-multiply peak, measured by the same run, so a
figure says how far from the hardware limit it is.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bort import io
from bort.config import BenchConfig
from bort.errors import BortError
from bort.speed.latency import busy_warning, hardware_id, interleaved, primed_ms, time_call, torch_threads
from bort.speed.models import SpeedModel, example_inputs, input_names, resolve

GEMM_SIZES = (512, 1024, 2048)


def _gflops(flops: float, ms: float) -> float:
    return flops / (ms / 1000) / 1e9


def _best_gflops(fn: Callable[[], object], flops: float, repeats: int) -> float:
    return _gflops(flops, statistics.median(time_call(fn, repeats, warmup=1)))


def torch_gemm_peak(threads: int, sizes: Iterable[int] = GEMM_SIZES, repeats: int = 5, device: str = "cpu") -> float:
    """Best median GFLOP/s of fp32 square matrix products in PyTorch over a few sizes (on `device`)."""
    with torch_threads(threads), torch.inference_mode():
        pairs = [(torch.randn(n, n, device=device), torch.randn(n, n, device=device)) for n in sizes]
        return max((_best_gflops(_synchronized(lambda a=a, b=b: a @ b, device), 2 * len(a) ** 3, repeats)
                    for a, b in pairs), default=0.0)


def _synchronized(call: Callable[[], object], device: str) -> Callable[[], object]:
    """`call`, waiting for the GPU to finish it: a CUDA call returns once its work is queued, not done."""
    if device == "cpu":
        return call
    return lambda: (call(), torch.cuda.synchronize())


def ort_gemm_peak(threads: int, sizes: Iterable[int] = GEMM_SIZES, repeats: int = 5) -> float:
    """The same microbenchmark through onnxruntime's MatMul (its kernels differ from PyTorch's)."""
    import onnx
    from onnx import TensorProto, helper

    from bort.speed.export import ort_session

    best = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            values = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "abc"]
            graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", values[:2], values[2:])
            path = Path(tmp) / f"gemm{n}.onnx"
            # IR 10 (onnx 1.16): a MatMul needs nothing newer, and older onnxruntime builds refuse newer IRs
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
            session = ort_session(path, threads, spinning=False)
            feed = {x: np.random.default_rng(0).standard_normal((n, n), dtype=np.float32) for x in "ab"}
            best = max(best, _best_gflops(lambda s=session, f=feed: s.run(None, f), 2 * n**3, repeats))
    return best


@dataclass
class _Cell:
    """One model in one runtime: an engine built once, timed at each shape."""

    model: SpeedModel
    runtime: str
    engine: Any
    times: list[float] = field(default_factory=list)
    error: str | None = None
    last_ms: float | None = None


def _engine(model: SpeedModel, runtime: str, threads: int, onnx_dir: Path, modules: dict[str, torch.nn.Module],
            device: str = "cpu") -> Any:
    if runtime in ("torch", "compile"):
        if model.label not in modules:
            modules[model.label] = model.build().to(device)
        return modules[model.label] if runtime == "torch" else torch.compile(modules[model.label], dynamic=False)
    from bort.speed.export import cached_export, ort_session

    path = cached_export(model, onnx_dir, int8=runtime.endswith("-int8"), fuse="unfused" not in runtime)
    return ort_session(path, threads, spinning=False)


def _call(cell: _Cell, batch_size: int, seq_len: int, device: str = "cpu") -> Callable[[], object]:
    inputs = example_inputs(cell.model, batch_size, seq_len)
    if cell.runtime in ("torch", "compile"):
        inputs = {k: v.to(device) for k, v in inputs.items()}
        return _synchronized(lambda: cell.engine(**inputs), device)
    feed = {n: inputs[n].numpy() for n in input_names(cell.model.config)}
    return lambda: cell.engine.run(None, feed)


@dataclass
class BenchResult:
    """One record per model x runtime x shape (see the module doc); `table()` is what `bort bench` prints."""

    records: list[dict[str, Any]]

    def table(self) -> str:
        return format_table(self.records)


def bench(config: BenchConfig, json_path: str | os.PathLike | None = None, progress: bool = True) -> BenchResult:
    """Time every model x runtime x shape, interleaved; `json_path` gets the records as a JSON list.
    `config.max_seconds` caps the timed time of one cell at one shape (at least 3 runs are kept), so a benchmark with
    BERT-large at batch 32 x 512 still finishes. Outputs are checked before any timing."""
    if not config.models:
        raise BortError("name at least one model (a folder, config.json, hub name or preset)")
    if any(r.startswith("onnx") for r in config.runtimes):
        from bort.speed.export import require_onnx

        require_onnx()
    for flag, path in (("--json", json_path), ("--plot", config.plot)):
        if path:
            io.check_new_file(path, flag, config.overwrite)
    warmup = max(config.warmup_runs, 1) if "compile" in config.runtimes else config.warmup_runs
    specs = [resolve(m) for m in config.models]
    labels = [s.label for s in specs]
    if repeated := [label for label in labels if labels.count(label) > 1]:
        raise BortError(f"two models are labelled '{repeated[0]}'; name them with LABEL=SOURCE")
    for spec in specs:
        example_inputs(spec, 1, max(config.seq_lens))  # a one-line error before any slow work
    if config.device == "cuda" and not torch.cuda.is_available():
        raise BortError("--device cuda: PyTorch sees no CUDA GPU here (a CPU build, or no driver); drop --device "
                        "to time on the CPU")
    threads = config.threads or torch.get_num_threads()
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="bort-bench-") as tmp:
        records = _run(specs, config, threads, warmup, Path(tmp), progress)
    if json_path:
        io.write_json(json_path, records)
    if config.plot:
        plot(records, config.plot)
    return BenchResult(records)


def _run(specs: list[SpeedModel], config: BenchConfig, threads: int, warmup: int, onnx_dir: Path,
         progress: bool) -> list[dict[str, Any]]:
    use_ort = any(r.startswith("onnx") for r in config.runtimes)
    load_start = _load()
    device = config.device
    peaks = {"torch": [torch_gemm_peak(threads, device=device)],
             "onnxruntime": [ort_gemm_peak(threads)] if use_ort else []}
    modules: dict[str, torch.nn.Module] = {}
    cells = []
    for spec in io.progress_bar(None, "preparing models", progress, iterable=specs):
        for runtime in config.runtimes:
            cell = _Cell(spec, runtime, None)
            try:
                cell.engine = _engine(spec, runtime, threads, onnx_dir, modules, device)
            except BortError as exc:
                cell.error = str(exc)
            cells.append(cell)
    shapes = [(b, s) for b in config.batch_sizes for s in config.seq_lens]
    bar = io.progress_bar(len(shapes) * (config.repeats + warmup), "timing", progress)
    # Every compiled model x shape is one more graph of the same `forward` code: raise dynamo's limit
    # so that all of them compile, and fail the cell rather than silently falling back to eager.
    compiled = sum(c.runtime == "compile" for c in cells) * len(shapes)
    with torch._dynamo.config.patch(recompile_limit=max(8, compiled + 8), fail_on_recompile_limit_hit=True):
        timed = _time_shapes(cells, shapes, config.repeats, warmup, config.max_seconds, bar, device)
    bar.close()
    peaks["torch"].append(torch_gemm_peak(threads, device=device))  # again at the end: the best seen in the run
    if use_ort:
        peaks["onnxruntime"].append(ort_gemm_peak(threads))
    records = _records(timed, threads, {k: max(v) for k, v in peaks.items() if v}, device)
    for record in records:
        record["load_average"] = [load_start, _load()]
    return records


def _time_shapes(cells: list[_Cell], shapes: list[tuple[int, int]], repeats: int, warmup: int,
                 max_seconds: float | None, bar: Any, device: str = "cpu") -> dict[tuple[int, int], list[_Cell]]:
    """The interleaved timing loop (see the module doc): the timed cells of each shape."""
    timed = {}
    for batch_size, seq_len in shapes:
        shape_cells = [_Cell(c.model, c.runtime, c.engine, error=c.error) for c in cells]
        calls: dict[int, Callable[[], object]] = {}
        for round_ in range(warmup + repeats):
            for index in interleaved(len(shape_cells), round_):
                cell = shape_cells[index]
                if cell.error or (round_ >= warmup and max_seconds and sum(cell.times) > max_seconds * 1000
                                  and len(cell.times) >= min(3, repeats)):
                    continue
                try:
                    if index not in calls:
                        calls[index] = _call(cell, batch_size, seq_len, device)
                    with torch.inference_mode():
                        cell.last_ms = primed_ms(calls[index], cell.last_ms if round_ >= warmup else None)
                except Exception as exc:  # a runtime failing on one model must not lose the others' figures
                    cell.error = f"{type(exc).__name__}: {io.reason(exc)}"
                    continue
                if round_ >= warmup:
                    cell.times.append(cell.last_ms)
            bar.update(1)
        timed[(batch_size, seq_len)] = shape_cells
    return timed


def _load() -> float | None:
    """1-minute load average: other processes on the machine distort every figure (see format_table)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _records(timed: dict[tuple[int, int], list[_Cell]], threads: int, peaks: dict[str, float],
             device: str = "cpu") -> list[dict[str, Any]]:
    """On the CPU every cell is held to the best GEMM peak of the run; on a GPU, PyTorch cells to the GPU's and
    ONNX Runtime cells (still on the CPU) to the CPU's."""
    hardware = hardware_id() + (f" | {torch.cuda.get_device_name()}" if device == "cuda" else "")
    records = []
    for (batch_size, seq_len), cells in timed.items():
        medians = {(c.model.label, c.runtime): statistics.median(c.times) for c in cells if c.times}
        first = cells[0].model
        first_cost = first.family.cost(first.arch, batch_size, seq_len)
        for cell in cells:
            cost = cell.model.family.cost(cell.model.arch, batch_size, seq_len)
            peak = max(peaks.values()) if device == "cpu" else peaks["onnxruntime" if cell.runtime.startswith(
                "onnx") else "torch"]
            record: dict[str, Any] = {
                "model": cell.model.label, "source": cell.model.source, "runtime": cell.runtime,
                "batch_size": batch_size, "seq_len": seq_len,
                "arch": dict(zip(cell.model.family.param_names, cell.model.arch, strict=True)),
                "params": cost.params, "effective_params": cost.effective_params, "ops": cost.ops,
                "params_ratio": cost.params / first_cost.params, "ops_ratio": cost.ops / first_cost.ops,
                "threads": threads, "device": device, "hardware": hardware, "peak_gflops": round(peak, 1),
                "gemm_peak_gflops": {k: round(v, 1) for k, v in peaks.items()}, "runs": len(cell.times)}
            if cell.times:
                median = medians[(cell.model.label, cell.runtime)]
                gflops = _gflops(cost.ops, median)
                same, eager = medians.get((first.label, cell.runtime)), medians.get((first.label, "torch"))
                record.update(median_ms=round(median, 3), p90_ms=round(float(np.percentile(cell.times, 90)), 3),
                              seq_per_s=round(batch_size / (median / 1000), 2), gflops=round(gflops, 1),
                              peak_fraction=round(gflops / peak, 4), speedup=round(same / median, 3) if same else None,
                              speedup_vs_first_torch=round(eager / median, 3) if eager else None)
            else:
                record.update(median_ms=None, p90_ms=None, seq_per_s=None, gflops=None, peak_fraction=None,
                              speedup=None, speedup_vs_first_torch=None)
            if cell.error:
                record["error"] = cell.error
            records.append(record)
    return records


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table of the records, with the run's hardware and measured peak on top."""
    if not records:
        return "(no records)"
    head = records[0]
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in head["gemm_peak_gflops"].items())
    lines = [f"hardware: {head['hardware']} | {head['threads']} threads",
             f"measured fp32 GEMM peak (GFLOP/s): {peaks}; peak used: "
             + (f"{head['peak_gflops']:.0f}" if head.get("device", "cpu") == "cpu"
                else f"each runtime's own (PyTorch on {head['device']})"),
             f"speedup: vs {head['model']} in the same runtime; vs eager: vs {head['model']} in PyTorch eager"]
    if warning := busy_warning((head.get("load_average") or [None])[0], head["threads"]):
        lines.append(f"WARNING: when the run started, {warning}")
    lines.append("")
    columns = ("model", "runtime", "batch", "seq", "median ms", "p90 ms", "seq/s", "params M", "eff M",
               "GFLOP", "GFLOP/s", "% peak", "speedup", "vs eager")
    rows = [(r["model"], r["runtime"], str(r["batch_size"]), str(r["seq_len"]),
             _fmt(r["median_ms"], ".2f"), _fmt(r["p90_ms"], ".2f"), _fmt(r["seq_per_s"], ".1f"),
             f"{r['params'] / 1e6:.1f}", f"{r['effective_params'] / 1e6:.1f}", f"{r['ops'] / 1e9:.2f}",
             _fmt(r["gflops"], ".1f"), _fmt(None if r["peak_fraction"] is None else 100 * r["peak_fraction"], ".1f"),
             _fmt(r["speedup"], ".2f") + ("x" if r["speedup"] else ""),
             _fmt(r["speedup_vs_first_torch"], ".2f") + ("x" if r["speedup_vs_first_torch"] else ""))
            for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    align = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                    for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    lines += [align(columns), align(tuple("-" * w for w in widths))] + [align(row) for row in rows]
    lines += [f"{r['model']} / {r['runtime']}: {r['error']}" for r in records if r.get("error")]
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Median latency per model, one bar per runtime, one panel per shape (log scale)."""
    shapes = sorted({(r["batch_size"], r["seq_len"]) for r in records})
    models = list(dict.fromkeys(r["model"] for r in records))
    runtimes = list(dict.fromkeys(r["runtime"] for r in records))
    fig, axes = io.new_figure(1, len(shapes), figsize=(4.5 * len(shapes), 4), squeeze=False)
    width = 0.8 / len(runtimes)
    for ax, (b, s) in zip(axes[0], shapes, strict=True):
        for j, runtime in enumerate(runtimes):
            ms = {r["model"]: r["median_ms"] or 0 for r in records
                  if (r["runtime"], r["batch_size"], r["seq_len"]) == (runtime, b, s)}
            ax.bar(np.arange(len(models)) + j * width, [ms.get(m, 0) for m in models], width, label=runtime)
        ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_title(f"batch {b}, seq {s}")
        ax.set_ylabel("median latency (ms)")
    axes[0][0].legend()
    fig.tight_layout()
    return io.save_figure(fig, path, dpi=120)
