"""Reproduce the speed benchmark of issue 5: is the Bort shape really "up to 20x" (target: 40x) faster?

Full run (about an hour on 2 cores; BERT-large at batch 32 x 512 costs ~11 TFLOP per call):
    python benchmarks/bench_speed.py --json benchmarks/speed.json --plot benchmarks/speed.png
Quick check (a few minutes): python benchmarks/bench_speed.py --quick
Add the architecture `bort extract` chose: --extra chosen=path/to/config.json (repeatable).
The full run times the issue's four runtimes; add others with --runtime (e.g. onnx-unfused).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import bort
from bort.config import BenchConfig
from bort.io import default_source
from bort.speed.bench import format_table

BORT_TARGET_SPEEDUP = 40.0  # Bort shape, best runtime, vs BERT-large in PyTorch eager
PEAK_TARGET = 0.85  # fraction of the measured fp32 GEMM peak at batch 32 x 128
FULL_RUNTIMES = ["torch", "compile", "onnx", "onnx-int8"]
RUNTIMES = BenchConfig.__dataclass_fields__["runtimes"].metadata["choices"]


def models(extra: list[str], quick: bool) -> list[str]:
    base = ["bert-base", "bort", f"minilm={default_source()}"] if quick else \
        ["bert-large", "bert-base", "bort", f"minilm={default_source()}"]
    return base + extra


def summary(records: list[dict[str, Any]]) -> list[str]:
    """The issue's two targets, stated against what this run measured."""
    lines = []
    done = [r for r in records if r.get("median_ms")]
    for b, s in sorted({(r["batch_size"], r["seq_len"]) for r in done}):
        shape = [r for r in done if (r["batch_size"], r["seq_len"]) == (b, s)]
        eager = next((r for r in shape if r["model"] == "bert-large" and r["runtime"] == "torch"), None)
        bort = [r for r in shape if r["model"] == "bort"]
        if eager and bort:
            best = min(bort, key=lambda r: r["median_ms"])
            ratio = eager["median_ms"] / best["median_ms"]
            verdict = "met" if ratio >= BORT_TARGET_SPEEDUP else "not met"
            lines.append(f"b{b} s{s}: Bort shape ({best['runtime']}) is {ratio:.1f}x faster than BERT-large "
                         f"eager (target {BORT_TARGET_SPEEDUP:.0f}x: {verdict})")
        fp32 = [r for r in shape if not r["runtime"].endswith("int8")]  # the peak is an fp32 peak
        if not fp32:
            continue
        top = max(fp32, key=lambda r: r["peak_fraction"])
        note = ""
        if (b, s) == (32, 128):
            verdict = "met" if top["peak_fraction"] >= PEAK_TARGET else "not met"
            note = f" (target {PEAK_TARGET:.0%}: {verdict})"
        lines.append(f"b{b} s{s}: best fp32 fraction of the measured GEMM peak: {top['peak_fraction']:.1%} "
                     f"({top['model']}, {top['runtime']}){note}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 1 x 128, torch and onnx, no BERT-large")
    p.add_argument("--extra", action="append", default=[], metavar="CONFIG_OR_FOLDER",
                   help="more models (LABEL=SOURCE allowed), e.g. the architecture bort extract chose")
    p.add_argument("--runtime", action="append", choices=RUNTIMES, dest="runtimes",
                   help="runtimes to time (repeatable; default: torch, compile, onnx, onnx-int8; quick: torch, onnx)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, help="timed runs per cell (default: 10, quick 5)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="time cap per cell and shape (>= 3 runs)")
    p.add_argument("--json", help="write the records here")
    p.add_argument("--plot", help="write a latency plot here")
    p.add_argument("--show", metavar="JSON", help="print the table and the targets of a saved run, time nothing")
    args = p.parse_args(argv)
    if args.show:
        records = json.loads(Path(args.show).read_text())
        print(format_table(records), "", *summary(records), sep="\n")
        return 0
    records = bort.bench(models(args.extra, args.quick),
                         runtimes=args.runtimes or (["torch", "onnx"] if args.quick else FULL_RUNTIMES),
                         batch_sizes=[1] if args.quick else [1, 32], seq_lens=[128] if args.quick else [128, 512],
                         threads=args.threads, repeats=args.repeats or (5 if args.quick else 10),
                         warmup_runs=1, max_seconds=args.max_seconds, json_path=args.json,
                         plot=args.plot).records
    print(" ".join(["python", *sys.argv]))
    print(format_table(records))
    print()
    print("\n".join(summary(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
