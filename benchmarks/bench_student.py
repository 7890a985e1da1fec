"""A student worth deploying: the experiment of the speed-target / task-distillation issue.

Stages, each resumable (rerun the same command; finished work is loaded, not redone):
1. (a) teachers: the embedded all-MiniLM-L6-v2 fine-tuned on the FULL official train split of each task (SST-2: a
   seeded subsample of --sst2-train examples, default 20,000, for the CPU budget), seed 0 of every task first;
2. the student: the architecture `bort extract --speedup K --speed measured` chooses from MiniLM, distilled from it
   by `bort pretrain --init source` for --pretrain-steps steps (the budget is printed);
3. per task, two Agora runs of the student (Agora carves its dev split from train; every column below trains on the
   same train part, with the same seeds, and inside each run with the same optimizer steps):
   - hard labels, the paper's way, labeller = the seed-0 teacher: (f) Agora, and its `--compare` control (b) plain;
   - soft labels, teacher = the seed-0 teacher: (e) Agora, and its controls (c) task distillation and
     (d) task distillation + uniform augmentation (as many generated points, from random train points);
4. the teachers' other seeds (the columns use only seed 0's teacher, so they come first);
5. teacher and student timed side by side (`bort bench`, batch 1 x 128, PyTorch eager and int8 ONNX Runtime).

    python benchmarks/bench_student.py                      # everything, 7 tasks x 3 seeds (hours on 2 cores)
    python benchmarks/bench_student.py --tasks CB --seeds 0 --pretrain-steps 5 --output runs/smoke   # a smoke run

The table (x100, mean ± std over seeds), the averages, each column's CPU minutes and the speed figures are printed
and written to <output>/results.md and results.json.
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
ALL_TASKS = ("CB", "COPA", "RTE", "MRPC", "CoLA", "STS-B", "SST-2")  # the quick, scarce tasks first
COLUMNS = {"plain": "(b) plain", "distilled": "(c) + task distillation", "uniform": "(d) (c) + uniform aug.",
           "agora_soft": "(e) (c) + Agora, soft labels", "agora_hard": "(f) Agora, hard labels"}


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
    p.add_argument("--pretrain-steps", type=int, default=4000, help="at least 30 CPU minutes on 2 cores")
    p.add_argument("--stage", choices=("teachers", "student", "all"), default="all",
                   help="stop after this stage (teachers: seed 0 of every task's teacher)")
    args = p.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("bort").setLevel(logging.INFO)
    out, started = Path(args.output), time.time()
    out.mkdir(parents=True, exist_ok=True)
    minutes_file = out / "cpu_seconds.json"
    seconds = json.loads(minutes_file.read_text()) if minutes_file.is_file() else {}

    def common(task: str, seeds: list[int]) -> dict:
        return dict(data_dir=args.data_dir, seeds=seeds, epochs=3, lr=1e-4, batch_size=32, max_seq_len=128,
                    max_train_samples=args.sst2_train if task == "SST-2" else None, progress=False)

    def finetune(model: str, task: str, folder: Path, seeds: list[int]) -> dict:
        return bort.finetune(model, task, str(folder), resume=folder.exists(), **common(task, seeds)).summary

    def agora(model: str, task: str, folder: Path, **extra) -> dict:
        """Θ = two learning rates, 3 rounds; `compare` trains the plain (or distilled) control."""
        return bort.agora(model, task, str(folder), resume=folder.exists(), compare=True, rounds=3,
                          theta="lr=1e-4,3e-4", samples_per_mistake=4, **common(task, args.seeds), **extra).summary

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
    for task in args.tasks:  # the columns first: they use only the seed-0 teacher, and are most of the CPU time
        teacher_dir = str(out / "teacher" / task / "plain" / "seed-0")
        row = {"task": task, "metric": get_task(task).metrics[0]}
        for labels, extra in (("hard", {"labeller": teacher_dir}), ("soft", {"teacher": teacher_dir,
                                                                            "uniform_control": True})):
            summary = timed(seconds, f"agora_{labels}/{task}", lambda e=extra, t=task, k=labels: agora(
                student, t, out / f"agora-{k}" / t, **e))
            row[f"agora_{labels}"], row["student_ms"] = summary["agora"], summary.get("cpu_latency_ms")
            row.update({k: summary[k] for k in ("plain", "distilled", "uniform") if k in summary})
            row[f"rounds_{labels}"] = {s: [r["generated"] for r in v["rounds"]] for s, v in summary["rounds"].items()}
            row[f"labeller_dev_{labels}"], row["majority_dev"] = summary["labeller_dev"], summary["majority_dev"]
            minutes_file.write_text(json.dumps(seconds, indent=1))
        rows.append(row)
        print(f"{task}: columns done at {(time.time() - started) / 60:.1f} min: "
              + "; ".join(f"{COLUMNS[c]} {cell(row[c], row['metric'])}" for c in COLUMNS), flush=True)
    for row, teacher in zip(rows, teachers(args.seeds).values(), strict=True):
        row["teacher"], row["teacher_ms"] = teacher["plain"], teacher.get("cpu_latency_ms")
    task = args.tasks[0]  # the teacher and the student fine-tuned on one task: the models a user deploys
    speed = side_by_side(out / "teacher" / task / "plain" / "seed-0", out / "agora-soft" / task, out)
    report(rows, args, seconds, student, speed, out)


def side_by_side(teacher: Path, student: Path, out: Path) -> list[dict]:
    """Teacher and student in one `bort bench` run: batch 1 x 128, eager and int8 ONNX Runtime, interleaved."""
    path = out / "speed.json"
    if not path.is_file():
        bort.bench([f"teacher={teacher}", f"student={student}"], runtimes=["torch", "onnx-int8"], batch_sizes=[1],
                   seq_lens=[128], repeats=30, json_path=path, progress=False)
    return json.loads(path.read_text())


def make_student(args: argparse.Namespace, out: Path) -> str:
    """`bort extract --speedup K --speed measured` from MiniLM, then `bort pretrain --init source` of the choice."""
    extract_dir, folder = out / "extract", out / "student"
    result = bort.extract(output=str(extract_dir), resume=extract_dir.exists(), speedup=args.speedup,
                          speed="measured", init="source")
    chosen, timed_together = result.summary["chosen"], result.summary.get("side_by_side") or [{}]
    speedup = timed_together[-1].get("speedup") or 1 / chosen["ratios_to_source"]["latency"]
    print(f"student architecture {chosen['arch']}: {speedup:.2f}x faster than the source (side by side), ê "
          f"{chosen['surrogate_error']:.4f}; W-optimum {result.summary['w_optimum']['arch']}", flush=True)
    if not (folder / "model.safetensors").is_file():
        bort.pretrain(str(result.output / "chosen"), str(folder), init="source", max_steps=args.pretrain_steps,
                      batch_size=16, max_seq_len=128, resume=folder.exists(), progress=False)
    return str(folder)


def cell(summary: dict, metric: str) -> str:
    return f"{100 * summary['mean'][metric]:.1f} ± {100 * summary['std'][metric]:.1f}"


def report(rows: list[dict], args: argparse.Namespace, seconds: dict, student: str, speed: list[dict],
           out: Path) -> None:
    """Markdown table (x100, mean ± std over seeds), averages, the targets' figures, CPU minutes, speed."""
    header = ["task", "metric", "(a) teacher", *COLUMNS.values()]
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; seeds {args.seeds}; "
             f"student {student}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | {cell(r['teacher'], r['metric'])} | "
                     + " | ".join(cell(r[c], r["metric"]) for c in COLUMNS) + " |")
    score = lambda r, k: 100 * r[k]["mean"][r["metric"]]  # noqa: E731
    averages = {}
    for label, subset in (("average", rows), ("average, scarce tasks", [r for r in rows if r["task"] in SCARCE])):
        if subset:
            averages[label] = {k: statistics.mean(score(r, k) for r in subset) for k in ("teacher", *COLUMNS)}
            lines.append(f"| {label} | | " + " | ".join(f"{m:.1f}" for m in averages[label].values()) + " |")
    best = max(COLUMNS, key=lambda k: averages["average"][k])
    worst = min(rows, key=lambda r: score(r, best) / score(r, "teacher") if score(r, "teacher") else 1)
    lines.append(f"best column {COLUMNS[best]}: {averages['average'][best] / averages['average']['teacher']:.1%} of "
                 f"the teacher's average (target 97%); lowest task {worst['task']} at "
                 f"{score(worst, best) / score(worst, 'teacher'):.1%} (target >= 90%)")
    scarce = [r for r in rows if r["task"] in SCARCE]
    if scarce:
        per_seed = [statistics.mean(100 * (r["agora_soft"]["seeds"][str(s)][r["metric"]]
                                           - r["uniform"]["seeds"][str(s)][r["metric"]]) for r in scarce)
                    for s in args.seeds]
        spread = statistics.stdev(per_seed) if len(per_seed) > 1 else float("nan")
        lines.append(f"(e) - (d) on the scarce tasks: {statistics.mean(per_seed):+.2f} points (per seed "
                     f"{', '.join(f'{d:+.2f}' for d in per_seed)}; spread {spread:.2f}; target >= +1.0 and above the "
                     "spread)")
    wins = [r["task"] for r in rows if score(r, best) > score(r, "teacher")]
    lines.append(f"tasks where {COLUMNS[best]} beats the teacher: {len(wins)} ({', '.join(wins) or 'none'})")
    cpu = {k: sum(v for name, v in seconds.items() if name.startswith(k + "/")) / 60
           for k in ("teacher", "agora_hard", "agora_soft")}
    lines.append(f"CPU minutes (wall, {os.cpu_count()} cores): teachers {cpu['teacher']:.0f}; hard-label Agora run "
                 f"with control (b), (f) {cpu['agora_hard']:.0f}; soft-label Agora run with controls (c), (d), (e) "
                 f"{cpu['agora_soft']:.0f}; student (extract + pretrain) {seconds.get('student', 0) / 60:.0f}")
    ms = {(r["model"], r["runtime"]): r["median_ms"] for r in speed if r.get("median_ms")}
    for runtime in ("torch", "onnx-int8"):
        if ("teacher", runtime) in ms and ("student", runtime) in ms:
            t, st = ms[("teacher", runtime)], ms[("student", runtime)]
            lines.append(f"speed side by side ({runtime}, batch 1 x 128, median): teacher {t:.2f} ms, student "
                         f"{st:.2f} ms: {t / st:.1f}x (target >= 4x)")
    text = "\n".join(lines)
    print(text)
    (out / "results.json").write_text(json.dumps({"rows": rows, "speed": speed}, indent=1, default=str))
    (out / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
