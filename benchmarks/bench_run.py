"""`bort run` as a user runs it: the embedded MiniLM, --speedup 4, the default budget, on SST-2, MRPC and STS-B.
Prints each run's wall time against its budget (target: within 15%) and its report's figures (target: the student
keeps >= 95% of its teacher's dev score at >= 4x its speed, timed side by side). Resumable: rerun the same command.

    python benchmarks/bench_run.py                              # 3 tasks x the default budget (about 3 hours)
    python benchmarks/bench_run.py --tasks MRPC --budget-minutes 20
    python benchmarks/bench_run.py --tasks MRPC --speedup 3     # a deeper student, for paraphrase
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import bort
from bench_student import machine
from bort.tasks import get_task

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("BORT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--output", default=str(REPO / "runs" / "bench-run"))
    p.add_argument("--tasks", nargs="+", default=["SST-2", "MRPC", "STS-B"])
    p.add_argument("--budget-minutes", type=float, help="default: bort run's own")
    p.add_argument("--speedup", type=float, default=4.0, help="bort run's --speedup (default: 4, the issue's target)")
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("bort").setLevel(logging.INFO)  # the plan, each stage's start and end
    budget = {"budget_minutes": args.budget_minutes} if args.budget_minutes else {}
    lines = [f"machine: {machine()}",
             "| task | metric | teacher | student | kept | constant guess | speed-up (torch / onnx-int8) | stages min "
             "| call min | budget min |", "|---|---|---|---|---|---|---|---|---|---|"]
    for task in args.tasks:
        out = Path(args.output) / task
        start = time.time()
        result = bort.run(None, task, out, data_dir=args.data_dir, speedup=args.speedup, resume=out.exists(),
                          progress=False, **budget)
        s, metric = result.summary, get_task(task).metrics[0]
        wall = sum(v or 0 for v in s["stage_seconds"].values()) / 60  # every stage's own time, over resumes
        call = (time.time() - start) / 60  # the whole command (planning too) when this call ran it from the start
        teacher = (s["student"].get("teacher_dev") or s["teacher"].get("dev"))[metric]
        student = s["student"]["dev"][metric]
        guess = s.get("majority_dev", {}).get(metric)  # the floor of having learned the task (runs since 2026-12-05)
        lines.append(f"| {task} | {metric} | {100 * teacher:.1f} | {100 * student:.1f} | {student / teacher:.1%} | "
                     f"{'' if guess is None else f'{100 * guess:.1f}'} | "
                     f"{s['speedup'].get('torch', 0):.1f}x / {s['speedup'].get('onnx-int8', 0):.1f}x | {wall:.1f} "
                     f"| {call:.1f} | {s['budget_minutes']:g} |")
        print(f"{task}: done in {(time.time() - start) / 60:.1f} min this call; report {out / 'report.html'}",
              flush=True)
    text = "\n".join(lines)
    print(text)
    Path(args.output, "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
