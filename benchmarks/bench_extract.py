"""Benchmark of `bort extract` on the Bort paper's grid over BERT-large (issue: extraction benchmark).

Prints: wall time, candidates trained, the chosen architecture, its params and effective params as a
fraction of BERT-large, its measured CPU latency ratio to BERT-large (batch 1, sequence 128, measured
side by side in this run), the approximation check (finalists retrained with a 4x budget), and how the
cost grows with |Ξ| and 1/ε on sub-grids.

    python benchmarks/bench_extract.py                 # everything (about an hour on 2 cores)
    python benchmarks/bench_extract.py --part grid     # only the full grid and its check
    python benchmarks/bench_extract.py --part growth   # only the cost-growth table

The surrogate error ê is the cosine distance to the teacher (`hidden_loss="cosine"`), as in RESULTS.md;
`--hidden-loss mse` uses the library's default instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

import bort
from bort.families import get_family
from bort.io import default_source
from bort.search.extraction import BUILTIN_SPACES
from bort.speed.latency import hardware_id, time_call

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "text" / "wikitext-2"
COMMON = dict(source="bert-large", teacher=default_source(), corpus=[str(CORPUS)], theta="lr=1e-3", batch_size=8,
              max_seq_len=32, progress=True)


def side_by_side_latency(arch: tuple[int, ...], rounds: int = 7) -> tuple[float, float]:
    """Median ms of BERT-large and of `arch` at batch 1 x 128, timed in alternation so drift hits both."""
    family = get_family("bert", source="bert-large")
    models = {name: family.build(a).eval() for name, a in (("large", family.maximum()), ("chosen", arch))}
    inputs = family.example_input(arch, 1, 128)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            time_call(lambda m=model: m(**inputs), repeats=1, warmup=2)
        for _ in range(rounds):
            for name, model in models.items():
                times[name] += time_call(lambda m=model: m(**inputs), repeats=1, warmup=0)
    return statistics.median(times["large"]), statistics.median(times["chosen"])


def grid(out: Path, common: dict) -> dict:
    started = time.perf_counter()
    result = bort.extract(space="bort-paper", output=str(out / "grid"), resume=(out / "grid" / "run.json").exists(),
                          check_factor=4, **common)
    s = result.summary
    chosen = result.search.chosen
    large_ms, chosen_ms = side_by_side_latency(chosen.arch)
    report = {
        "wall_seconds_search": s["seconds"], "wall_seconds_total": round(time.perf_counter() - started, 1),
        "candidates_trained": s["candidates"], "arms_trained": sum(r["arms"] for r in s["rungs"]),
        "rungs": s["rungs"], "n": s["n"], "epsilon": s["epsilon"],
        "chosen": s["w_optimum"]["arch"],
        "params_fraction": chosen.params / result.search.maximum.params,
        "effective_params_fraction": chosen.effective_params / result.search.maximum.effective_params,
        "latency_ms_bert_large": round(large_ms, 2), "latency_ms_chosen": round(chosen_ms, 2),
        "speedup_vs_bert_large": round(large_ms / chosen_ms, 2),
        "approximation_check": s["approximation_check"],
    }
    print(json.dumps(report, indent=2))
    return report


def space_file(out: Path, name: str, space: dict[str, list[int]]) -> str:
    """A sub-grid as a JSON file beside the runs (--space takes a built-in name or a file)."""
    path = out / "spaces" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(space))
    return str(path)


def growth(out: Path, common: dict) -> list[dict]:
    """Run time against |Ξ| (nested sub-grids of the paper's grid) and against 1/ε."""
    paper = BUILTIN_SPACES["bort-paper"]
    subgrids = {
        8: {"D": [2, 4], "A": [4, 8], "H": [512], "I": [256, 512]},
        16: {"D": [2, 4], "A": [4, 8], "H": [512, 768], "I": [256, 512]},
        32: {"D": [2, 4, 6, 8], "A": [4, 8], "H": [512, 768], "I": [256, 512]},
    }
    rows = []
    for size, space in subgrids.items():
        assert all(set(v) <= set(paper[k]) for k, v in space.items())
        r = bort.extract(space=space_file(out, f"size{size}", space), epsilon=0.2, output=str(out / f"size{size}"),
                         overwrite=True, **common)
        rows.append({"grid_points": size, "epsilon": 0.2, "steps_planned": r.summary["planned_steps"],
                     "seconds": r.summary["seconds"], "chosen": r.summary["chosen"]["arch"]})
    for epsilon in (0.4, 0.1):
        r = bort.extract(space=space_file(out, "size8", subgrids[8]), epsilon=epsilon,
                         output=str(out / f"eps{epsilon}"), overwrite=True, **common)
        rows.append({"grid_points": 8, "epsilon": epsilon, "steps_planned": r.summary["planned_steps"],
                     "seconds": r.summary["seconds"], "chosen": r.summary["chosen"]["arch"]})
    print("| grid points | ε | planned steps | seconds | chosen D,A,H,I |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['grid_points']} | {row['epsilon']} | {row['steps_planned']} | {row['seconds']} | "
              f"{','.join(str(v) for v in row['chosen'].values())} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "grid", "growth"], default="all")
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-extract"))
    parser.add_argument("--hidden-loss", choices=["cosine", "mse"], default="cosine",
                        help="surrogate error ê: cosine distance (the figures in RESULTS.md) or normalised MSE")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("bort").setLevel(logging.INFO)  # the search states its budget and progress
    common = {**COMMON, "hidden_loss": args.hidden_loss}
    if not CORPUS.is_dir():
        raise SystemExit(f"corpus not found at {CORPUS}: clone the repository next to ../shared")
    out = Path(args.output)
    print(f"machine: {hardware_id()}, {torch.get_num_threads()} threads")
    if args.part in ("all", "grid"):
        grid(out, common)
    if args.part in ("all", "growth"):
        growth(out, common)


if __name__ == "__main__":
    main()
