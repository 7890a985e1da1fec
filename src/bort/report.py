"""Tables, CSV and plots of a search: what users read after `bort extract`."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bort import io as bort_io
from bort.search.fptas import Candidate

CANDIDATE_COLUMNS = ("params", "effective_params", "ops", "latency_ms", "surrogate_error", "W", "pareto",
                     "steps", "theta")


def candidate_row(c: Candidate, names: Sequence[str]) -> dict[str, Any]:
    return dict(zip(names, c.arch, strict=True), params=c.params, effective_params=c.effective_params, ops=c.ops,
                latency_ms="" if c.latency_ms is None else round(c.latency_ms, 3),
                surrogate_error=None if c.error is None else round(c.error, 6),
                W=None if c.W is None else round(c.W, 6), pareto="" if c.pareto is None else str(c.pareto).lower(),
                steps=c.steps, theta=c.theta)


def write_candidates_csv(path: Path, candidates: Sequence[Candidate], names: Sequence[str]) -> None:
    """One row per trained candidate, best W first; `pareto` is empty for candidates not trained to the full
    budget (their ê is not comparable with the finalists')."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*names, *CANDIDATE_COLUMNS])
    writer.writeheader()
    writer.writerows(candidate_row(c, names) for c in sorted(candidates, key=lambda c: (-(c.W or 0), c.arch)))
    bort_io.write_text(path, buffer.getvalue())


def plot_pareto(path: Path, candidates: Sequence[Candidate], chosen: Candidate, constrained: Candidate | None,
                measured: bool) -> None:
    """Surrogate error against size and against speed; the front joined, the choice marked."""
    fig, axes = bort_io.new_figure(1, 2, figsize=(11, 4.2), sharey=True)
    speed_axis = ("latency_ms", "latency (ms)", 1) if measured else ("ops", "GFLOPs / forward", 1e9)
    for ax, (attr, label, scale) in zip(axes, [("params", "parameters (M)", 1e6), speed_axis], strict=True):
        ax.scatter([getattr(c, attr) / scale for c in candidates], [c.error for c in candidates], s=18,
                   c=["tab:blue" if c.pareto else "lightgray" for c in candidates],
                   label="candidates (blue: Pareto front)")
        ax.scatter([getattr(chosen, attr) / scale], [chosen.error], marker="*", s=220, c="tab:red",
                   label=f"W-optimal {','.join(map(str, chosen.arch))}")
        if constrained is not None and constrained is not chosen:
            ax.scatter([getattr(constrained, attr) / scale], [constrained.error], marker="D", s=80, c="tab:green",
                       label=f"target's choice {','.join(map(str, constrained.arch))}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("surrogate error ê")
    axes[0].legend(fontsize=8)
    fig.suptitle("bort extract: candidates, Pareto front over (params, speed, ê) and the choice")
    fig.tight_layout()
    bort_io.save_figure(fig, path)


def plot_curve(metrics: Path, path: Path) -> None:
    """The held-out loss terms of a training run (its metrics.jsonl eval records) against the step."""
    evals = [r for r in bort_io.read_jsonl(metrics) if r.get("kind") == "eval"]
    fig, ax = bort_io.new_figure(figsize=(6, 3.5))
    scores = {"kind", "step", "accuracy", "agreement", "teacher_accuracy", "cosine"}  # not losses: another scale
    for key in sorted({k for r in evals for k in r} - scores):
        points = [(r["step"], r[key]) for r in evals if isinstance(r.get(key), int | float)]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.set_title("pre-training: held-out loss terms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    bort_io.save_figure(fig, path)


def human(n: float) -> str:
    """12_345_678 -> '12.3M': readable sizes from 40 parameters (the toy) to 335M (BERT-large)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.{1 if abs(n) >= 10 * scale else 2}f}{suffix}"
    return str(int(n))


def format_table(rows: Sequence[Candidate], names: Sequence[str], maximum: Candidate, measured: bool) -> str:
    """A short fixed-width table: architecture, sizes and speed relative to the maximum point, ê, W."""
    speed = "latency" if measured else "ops"
    header = f"{','.join(names):>18} {'params':>9} {'eff.':>9} {speed + '/T':>9} {'ê':>8} {'W':>8}"
    lines = [header, "-" * len(header)]
    for c in rows:
        ratio = c.speed(measured) / maximum.speed(measured)
        lines.append(f"{','.join(map(str, c.arch)):>18} {human(c.params):>9} {human(c.effective_params):>9} "
                     f"{ratio:>9.3f} {c.error:>8.4f} {c.W:>8.4f}")
    return "\n".join(lines)
