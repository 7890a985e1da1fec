"""Is ê worth trusting? The Spearman correlation between −ê (the search's surrogate error) and what a user gets.

Takes the candidates of a finished `bort extract` run, picks architectures spread along its Pareto front (always the
W-optimum and the target's choice, the rest evenly by operations), pre-trains each with the same budget
(`bort pretrain --init source`), fine-tunes each on SST-2, MRPC and STS-B (official dev split), and prints the
Spearman correlation between −ê and the mean dev score. Resumable: rerun the same command. The picked architectures
and each finished one's scores go into --record (small JSON, committed with the repository), so the experiment
continues across sessions and machines without the extract folder.

    python benchmarks/bench_surrogate.py --extract runs/bench-student/extract            # 6 architectures
    python benchmarks/bench_surrogate.py --extract runs/x --archs 8 --pretrain-steps 600 --tasks MRPC \
        --record runs/x/surrogate.json
    python benchmarks/bench_surrogate.py --report      # the table and ρ of the committed rows, training nothing
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path

import bort
from bench_student import machine
from bort import io
from bort.tasks import get_task
from bort.tasks.metrics import compute

REPO = Path(__file__).resolve().parents[1]


def spread_along_front(extract: Path, count: int) -> list[dict]:
    """`count` Pareto-front candidates: the W-optimum, the target's choice, and the others evenly by operations."""
    result = json.loads((extract / "result.json").read_text())
    with open(extract / "candidates.csv") as f:
        front = sorted((r for r in csv.DictReader(f) if r["pareto"] == "true"), key=lambda r: int(r["ops"]))
    names = list(result["chosen"]["arch"])
    key = lambda arch: ",".join(str(arch[n]) for n in names)  # noqa: E731
    must = {key(result["chosen"]["arch"]), key(result["w_optimum"]["arch"])}
    picked = [r for r in front if key(r) in must]
    rest = [r for r in front if key(r) not in must]
    step = max(1, len(rest) / max(1, count - len(picked)))
    picked += [rest[int(i * step)] for i in range(min(len(rest), count - len(picked)))]
    return [{"arch": key(r), "error": float(r["surrogate_error"]), "ops": int(r["ops"])} for r in picked]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--extract", help="a finished `bort extract` output folder (not needed once --record has picked)")
    p.add_argument("--data-dir", default=os.environ.get("BORT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--output", default=str(REPO / "runs" / "bench-surrogate"))
    p.add_argument("--record", default=str(REPO / "benchmarks" / "results" / "bench_surrogate.json"))
    p.add_argument("--archs", type=int, default=6)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--tasks", nargs="+", default=["SST-2", "MRPC", "STS-B"])
    p.add_argument("--sst2-train", type=int, default=5000, help="SST-2 train subsample for this many fine-tunings")
    p.add_argument("--report", action="store_true", help="print the table and ρ of the rows in --record so far, "
                   "training nothing")
    args = p.parse_args()
    out, started, record_path = Path(args.output), time.time(), Path(args.record)
    setup = {"pretrain_steps": args.pretrain_steps, "tasks": args.tasks, "sst2_train": args.sst2_train}
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record["setup"] != setup:
            raise SystemExit(f"{record_path} holds rows of another setup ({record['setup']}, asked {setup}); pass "
                             "--record OTHER.json for a new experiment")
    elif args.extract:
        record = {"setup": setup, "picked": spread_along_front(Path(args.extract), args.archs), "rows": {}}
    else:
        raise SystemExit(f"{record_path} does not exist yet: pass --extract with a finished `bort extract` folder")
    for cand in record["picked"]:
        if args.report or cand["arch"] in record["rows"]:
            continue
        folder = out / cand["arch"].replace(",", "-")
        if not (folder / "pretrain" / "model.safetensors").is_file():
            bort.pretrain(cand["arch"], str(folder / "pretrain"), init="source", max_steps=args.pretrain_steps,
                          batch_size=16, max_seq_len=128, resume=(folder / "pretrain").exists(), progress=False)
        scores = {}
        for task in args.tasks:
            run = folder / task
            summary = bort.finetune(str(folder / "pretrain"), task, str(run), resume=run.exists(),
                                    data_dir=args.data_dir, epochs=3, lr=3e-4, batch_size=32, max_seq_len=128,
                                    max_train_samples=args.sst2_train if task == "SST-2" else None,
                                    measure_latency=False, progress=False).summary
            scores[task] = 100 * summary["plain"]["mean"][get_task(task).metrics[0]]
        record["rows"][cand["arch"]] = {**cand, "scores": scores, "mean": statistics.mean(scores.values()),
                                        "machine": machine()}
        io.write_text(record_path, json.dumps(record, indent=1) + "\n")
        print(f"{cand['arch']}: ê {cand['error']:.4f}, mean dev {record['rows'][cand['arch']]['mean']:.1f} "
              f"({(time.time() - started) / 60:.0f} min)", flush=True)
    rows = list(record["rows"].values())
    rho = compute(["spearman"], [-r["error"] for r in rows], [r["mean"] for r in rows])["spearman"]
    lines = [f"{args.pretrain_steps} pretrain steps each; tasks {', '.join(args.tasks)}",
             "| D,A,H,I | GFLOPs | ê | " + " | ".join(args.tasks) + " | mean | machine |",
             "|---" * (len(args.tasks) + 5) + "|"]
    lines += [f"| {r['arch']} | {r['ops'] / 1e9:.3f} | {r['error']:.4f} | "
              + " | ".join(f"{r['scores'][t]:.1f}" for t in args.tasks) + f" | {r['mean']:.1f} | {r['machine']} |"
              for r in rows]
    lines.append(f"Spearman(−ê, mean dev score) over {len(rows)} of {len(record['picked'])} architectures: "
                 f"{rho:.2f} (target >= 0.6)")
    text = "\n".join(lines)
    print(text)
    if not args.report:
        io.write_text(out / "results.md", text + "\n")


if __name__ == "__main__":
    main()
