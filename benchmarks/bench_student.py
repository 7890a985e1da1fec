"""A student worth deploying: the experiment of the speed-target / task-distillation issue.

Stages, each resumable (rerun the same command; finished work is loaded, not redone):
1. (a) teachers: the embedded all-MiniLM-L6-v2 fine-tuned on the FULL official train split of each task (SST-2: a
   seeded subsample of --sst2-train examples, default 20,000, for the CPU budget), seed 0 of every task first;
2. the student: the architecture `bort extract --speedup K --speed measured` chooses from MiniLM, distilled from it
   by `bort pretrain --init source` for --pretrain-steps steps (the budget is printed);
3. the teachers' seeds 1 and 2;
4. (b) the student fine-tuned plainly and (c) with task distillation from the seed-0 teacher (same seeds, same
   number of optimizer steps), on every task, scored on the official dev split.

    python benchmarks/bench_student.py                      # everything, 7 tasks x 3 seeds (hours on 2 cores)
    python benchmarks/bench_student.py --tasks RTE CB --seeds 0 --sst2-train 2000 --pretrain-steps 50  # a smoke run

The table (x100, mean ± std over seeds), the averages, each column's CPU minutes and the teacher's and student's
speed are printed and written to <output>/results.md and results.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import bort
from bort.io import default_source
from bort.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
SCARCE = ("RTE", "CB", "COPA", "MRPC", "CoLA")
ALL_TASKS = ("RTE", "MRPC", "CoLA", "STS-B", "CB", "COPA", "SST-2")
COLUMNS = {"plain": "(b) student plain", "distilled": "(c) student + task distillation"}


def timed(record: dict, key: str, work):
    """Run `work`, adding its wall time to record[key] unless it only loaded finished results."""
    start = time.time()
    result = work()
    record[key] = record.get(key, 0) + (time.time() - start)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("BORT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--output", default=str(REPO / "runs" / "bench-student"))
    p.add_argument("--tasks", nargs="+", default=list(ALL_TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sst2-train", type=int, default=20_000, help="SST-2 train subsample (the others are whole)")
    p.add_argument("--speedup", type=float, default=4.0)
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--stage", choices=("teachers", "student", "all"), default="all",
                   help="stop after this stage (teachers: seed 0 of every task's teacher)")
    args = p.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("bort").setLevel(logging.INFO)
    out, started = Path(args.output), time.time()
    out.mkdir(parents=True, exist_ok=True)
    minutes_file = out / "cpu_seconds.json"
    seconds = json.loads(minutes_file.read_text()) if minutes_file.is_file() else {}

    def finetune(model: str, task: str, folder: Path, seeds: list[int], **extra) -> dict:
        common = dict(data_dir=args.data_dir, seeds=seeds, epochs=3, lr=1e-4, batch_size=32, max_seq_len=128,
                      max_train_samples=args.sst2_train if task == "SST-2" else None, progress=False)
        return bort.finetune(model, task, str(folder), resume=folder.exists(), **common, **extra).summary

    def teachers(seeds: list[int]) -> dict[str, dict]:
        done = {}
        for task in args.tasks:
            done[task] = timed(seconds, f"teacher/{task}",
                               lambda t=task: finetune(default_source(), t, out / "teacher" / t, seeds))
            minutes_file.write_text(json.dumps(seconds, indent=1))
            print(f"{task}: teacher seeds {seeds} done at {(time.time() - started) / 60:.1f} min", flush=True)
        return done

    teachers([0])
    if args.stage == "teachers":
        return
    student = timed(seconds, "student", lambda: make_student(args, out))
    minutes_file.write_text(json.dumps(seconds, indent=1))
    if args.stage == "student":
        return
    rows = []
    for task, teacher in teachers(args.seeds).items():
        teacher_dir = str(out / "teacher" / task / "plain" / "seed-0")
        row = {"task": task, "metric": get_task(task).metrics[0], "teacher": teacher["plain"],
               "teacher_ms": teacher.get("cpu_latency_ms")}
        for column, extra in (("plain", {}), ("distilled", {"teacher": teacher_dir})):
            summary = timed(seconds, f"{column}/{task}", lambda c=column, e=extra, t=task: finetune(
                student, t, out / c / t, args.seeds, **e))
            row[column], row["student_ms"] = summary[column], summary.get("cpu_latency_ms")
            minutes_file.write_text(json.dumps(seconds, indent=1))
        rows.append(row)
        print(f"{task}: columns done at {(time.time() - started) / 60:.1f} min", flush=True)
    report(rows, args, seconds, student, out)


def make_student(args: argparse.Namespace, out: Path) -> str:
    """`bort extract --speedup K --speed measured` from MiniLM, then `bort pretrain --init source` of the choice."""
    extract_dir, folder = out / "extract", out / "student"
    result = bort.extract(output=str(extract_dir), resume=extract_dir.exists(), speedup=args.speedup,
                          speed="measured", init="source")
    chosen = result.summary["chosen"]
    print(f"student architecture {chosen['arch']}: {1 / chosen['ratios_to_source']['latency']:.1f}x faster than "
          f"the source (measured), ê {chosen['surrogate_error']:.4f}; W-optimum {result.summary['w_optimum']['arch']}",
          flush=True)
    if not (folder / "model.safetensors").is_file():
        bort.pretrain(str(result.output / "chosen"), str(folder), init="source", max_steps=args.pretrain_steps,
                      batch_size=16, max_seq_len=128, resume=folder.exists(), progress=False)
    return str(folder)


def cell(summary: dict, metric: str) -> str:
    return f"{100 * summary['mean'][metric]:.1f} ± {100 * summary['std'][metric]:.1f}"


def report(rows: list[dict], args: argparse.Namespace, seconds: dict, student: str, out: Path) -> None:
    """Markdown table (x100, mean ± std over seeds), averages, CPU minutes per column; results.md and .json."""
    header = ["task", "metric", "(a) teacher", *COLUMNS.values()]
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; seeds {args.seeds}; "
             f"student {student}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | {cell(r['teacher'], r['metric'])} | "
                     + " | ".join(cell(r[c], r["metric"]) for c in COLUMNS) + " |")
    for label, subset in (("average", rows), ("average, scarce tasks", [r for r in rows if r["task"] in SCARCE])):
        if subset:
            means = [statistics.mean(100 * r[k]["mean"][r["metric"]] for r in subset) for k in ("teacher", *COLUMNS)]
            lines.append(f"| {label} | | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    cpu = {k: sum(v for name, v in seconds.items() if name.startswith(k + "/")) / 60 for k in ("teacher", *COLUMNS)}
    lines.append("CPU minutes (wall, 2 cores): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
                 + f", student (extract + pretrain) {seconds.get('student', 0) / 60:.0f}")
    t_ms = [r["teacher_ms"] for r in rows if r.get("teacher_ms")]
    s_ms = [r["student_ms"] for r in rows if r.get("student_ms")]
    if t_ms and s_ms:
        t, s = statistics.median(t_ms), statistics.median(s_ms)
        lines.append(f"CPU latency in-run (batch 1, seq 128, median over tasks): teacher {t:.1f} ms, student "
                     f"{s:.1f} ms ({t / s:.1f}x); side by side: `bort bench` in RESULTS.md")
    text = "\n".join(lines)
    print(text)
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    (out / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
