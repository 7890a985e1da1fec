"""Do the search's and the report's side-by-side speed-ups agree? Both, on one finished `bort run`, in one process.

A `bort run` checks its speed target twice, each time side by side: the search times each finalist against the
source (random weights, base models, 40 interleaved rounds; the median of the per-round ratios), and the report
times the trained teacher and student (classifier heads, three runtimes, 20 rounds; the ratio of the medians). On
MRPC with `--speedup 3` the two gave 3.43x and 3.1x an hour apart. This runs both back to back, `--rounds` times
alternating, so any gap left is the two methods' and not the machine's drift between them.

    python benchmarks/bench_target_check.py --run /root/bort-runs/bench-run-speedup3/MRPC --rounds 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

from bench_student import machine
from bort import io
from bort.families import resolve_family
from bort.pipeline import time_pair
from bort.speed.latency import side_by_side


def as_search(summary: dict) -> tuple[float, float, float]:
    """Source ms, student ms and the median per-round ratio, as the search's confirmation times them."""
    family = resolve_family("bert", summary["source"])
    student = tuple(summary["architecture"][k] for k in family.param_names)
    source_ms, student_ms = side_by_side(family, [family.maximum(), student])
    ratio = statistics.median(s / m for s, m in zip(source_ms, student_ms, strict=True))
    return statistics.median(source_ms), statistics.median(student_ms), ratio


def as_report(run: Path) -> tuple[float, float, float]:
    """Teacher ms, student ms and their ratio in PyTorch, timed by the report's own function (three runtimes)."""
    _, ms, speedups = time_pair(run / "teacher", run / "student")
    return ms["teacher", "torch"], ms["student", "torch"], speedups["torch"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished `bort run` output folder")
    p.add_argument("--rounds", type=int, default=3, help="times to run both timings, alternating")
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run = Path(args.run)
    summary = io.read_json(run / "summary.json")
    print(f"{run}: student {summary['architecture']} on {machine()}; the run's own figures: search "
          f"{summary['target_check'][-1]['speedup']:.2f}x, report {summary['speedup']['torch']:.2f}x (PyTorch)")
    print("| round | search: source ms | student ms | speed-up | report: teacher ms | student ms "
          "| speed-up (PyTorch) |")
    print("|---|---|---|---|---|---|---|")
    for round_ in range(args.rounds):
        search = as_search(summary)
        report = as_report(run)
        print(f"| {round_ + 1} | {search[0]:.2f} | {search[1]:.2f} | {search[2]:.2f}x | {report[0]:.2f} | "
              f"{report[1]:.2f} | {report[2]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
