"""A student worth deploying: the experiment of the speed-target / task-distillation issue.

The student: the architecture `bort extract --speedup K --speed measured` chooses from MiniLM (or --arch, or the
record's), distilled from it by `bort pretrain --init source` for --pretrain-steps steps. Then, task by task:
1. (a) the teacher: the embedded all-MiniLM-L6-v2 fine-tuned on the FULL official train split (SST-2: a seeded
   subsample of --sst2-train examples, default 20,000, for the CPU budget), seed 0 first (the columns' teacher);
2. two Agora runs of the student (Agora carves its dev split from train; every column trains on the same train
   part, with the same seeds, and inside each run with the same optimizer steps):
   - hard labels, the paper's way, labeller = the seed-0 teacher: (f) Agora, and its `--compare` control (b) plain;
   - soft labels, teacher = the seed-0 teacher: (e) Agora, and its controls (c) task distillation and
     (d) task distillation + uniform augmentation (as many generated points, from random train points);
3. the teacher's other seeds;
4. once, teacher and student timed side by side (`bort bench`, batch 1 x 128, PyTorch eager and int8 ONNX Runtime).

A finished task's row goes into --record (small JSON, committed with the repository), so the experiment, hours on
2 cores, continues across sessions and machines: a rerun pre-trains the same student again (same recipe and seed;
each row names the CPU it ran on) and does only the tasks the record lacks.

    python benchmarks/bench_student.py                      # everything, 7 tasks x 3 seeds (hours on 2 cores)
    python benchmarks/bench_student.py --tasks CB --seeds 0 --pretrain-steps 5 --arch 2,12,384,384 \
        --output runs/smoke --record runs/smoke/record.json  # a smoke run

The table (x100, mean ± std over seeds), the averages, each column's CPU minutes and the speed figures are printed
and written to <output>/results.md.
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

import torch

import bort
from bort import io
from bort.io import default_source
from bort.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
SCARCE = ("RTE", "CB", "COPA", "MRPC", "CoLA")
ALL_TASKS = ("CB", "COPA", "RTE", "MRPC", "CoLA", "STS-B", "SST-2")  # the quick, scarce tasks first
COLUMNS = {"plain": "(b) plain", "distilled": "(c) + task distillation", "uniform": "(d) (c) + uniform aug.",
           "agora_soft": "(e) (c) + Agora, soft labels", "agora_hard": "(f) Agora, hard labels"}


def timed(record: dict, key: str, work, *args, **kwargs):
    """Run `work(*args, **kwargs)`, adding its wall time to record[key]."""
    start = time.time()
    result = work(*args, **kwargs)
    record[key] = record.get(key, 0) + (time.time() - start)
    return result


def machine() -> str:
    """The machine a figure was measured on (each row of the record names its own: sessions may run on other
    CPUs, or on a GPU)."""
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    cpu = f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cpus"
    # training runs on a GPU where there is one (the engine's rule): then the GPU names the row
    return f"{torch.cuda.get_device_name()} + {cpu}" if torch.cuda.is_available() else cpu


def load_record(path: Path, setup: dict) -> dict:
    """The finished rows so far. A row is kept only for the same setup (architecture, pre-training steps, seeds,
    SST-2 subsample): a changed setup needs another --record file, so results of two recipes never mix."""
    record = json.loads(path.read_text()) if path.is_file() else {"setup": setup, "rows": {}}
    if record["setup"] != setup:
        raise SystemExit(f"{path} holds rows of another setup ({record['setup']}, asked {setup}); pass "
                         "--record OTHER.json for a new experiment")
    return record


def recipe(args: argparse.Namespace, task: str, seeds: list[int]) -> dict:
    """The fine-tuning settings of every teacher and column: 3 epochs, lr 1e-4, batch 32 x 128 tokens."""
    return dict(data_dir=args.data_dir, seeds=seeds, epochs=3, lr=1e-4, batch_size=32, max_seq_len=128,
                max_train_samples=args.sst2_train if task == "SST-2" else None, progress=False)


def finetune(args: argparse.Namespace, model: str, task: str, folder: Path, seeds: list[int]) -> dict:
    """`bort finetune` with the recipe above, resumed where `folder` exists (the teachers of every benchmark)."""
    return bort.finetune(model, task, str(folder), resume=folder.exists(), **recipe(args, task, seeds)).summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("BORT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--output", default=str(REPO / "runs" / "bench-student"))
    p.add_argument("--record", default=str(REPO / "benchmarks" / "results" / "bench_student.json"),
                   help="the finished rows (small JSON, committed): a rerun, even on a new machine, skips them")
    p.add_argument("--tasks", nargs="+", default=list(ALL_TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sst2-train", type=int, default=20_000, help="SST-2 train subsample (the others are whole)")
    p.add_argument("--speedup", type=float, default=4.0)
    p.add_argument("--arch", help="D,A,H,I: the student, skipping the search (default: the record's, else the "
                                  "choice of `bort extract --speedup K --speed measured --init source`)")
    p.add_argument("--pretrain-steps", type=int, default=4000, help="at least 30 CPU minutes on 2 cores")
    p.add_argument("--student-steps", type=int, help="optimizer steps of every student column of a task, in each "
                                                     "training run (default: 3 epochs, like the teacher); another "
                                                     "recipe, so it needs another --record")
    args = p.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("bort").setLevel(logging.INFO)
    out, started, record_path = Path(args.output), time.time(), Path(args.record)
    out.mkdir(parents=True, exist_ok=True)
    if args.arch is None and record_path.is_file():
        args.arch = json.loads(record_path.read_text())["setup"]["arch"]
    arch = args.arch or choose_arch(args, out)
    setup = {"arch": arch, "pretrain_steps": args.pretrain_steps, "seeds": args.seeds, "sst2_train": args.sst2_train,
             **({"student_steps": args.student_steps} if args.student_steps else {})}
    recipe_name = f"-steps{args.student_steps}" if args.student_steps else ""  # its runs apart from 3 epochs' runs
    record = load_record(record_path, setup)
    save = lambda: io.write_text(record_path, json.dumps(record, indent=1, default=str) + "\n")  # noqa: E731

    def agora(model: str, task: str, folder: Path, **extra) -> dict:
        """Θ = two learning rates, 3 rounds; `compare` trains the plain (or distilled) control."""
        return bort.agora(model, task, str(folder), resume=folder.exists(), compare=True, rounds=3,
                          theta="lr=1e-4,3e-4", samples_per_mistake=4, **recipe(args, task, args.seeds),
                          **({"max_steps": args.student_steps} if args.student_steps else {}), **extra
                          ).summary

    todo = [task for task in args.tasks if task not in record["rows"]]
    student = None
    for task in todo:  # a task's row is whole (its columns and every seed of its teacher) before the next begins
        # each stage's wall time is saved as it ends, so a row finished in a later session still counts the earlier
        # sessions' stages (only a stage cut off in the middle loses the time it ran before the cut)
        seconds: dict[str, float] = record.setdefault("unfinished_seconds", {}).setdefault(task, {})
        teacher_root = out / "teacher" / task
        teacher_dir = str(teacher_root / "plain" / "seed-0")
        timed(seconds, "teacher", finetune, args, default_source(), task, teacher_root, [0])
        save()
        if student is None:  # pre-trained again in each session's new folder: its cost is one pre-training's
            student = pretrain_student(arch, args, out)
            record["student_seconds"] = json.loads((Path(student) / "pretrain.json").read_text())["seconds"]
        row = {"task": task, "metric": get_task(task).metrics[0], "machine": machine(),
               "date": time.strftime("%Y-%m-%d")}
        for labels, extra in (("hard", {"labeller": teacher_dir}), ("soft", {"teacher": teacher_dir,
                                                                            "uniform_control": True})):
            folder = out / f"agora-{labels}{recipe_name}" / task
            summary = timed(seconds, f"agora_{labels}", agora, student, task, folder, **extra)
            save()
            row[f"agora_{labels}"], row["student_ms"] = summary["agora"], summary.get("cpu_latency_ms")
            row.update({k: summary[k] for k in ("plain", "distilled", "uniform") if k in summary})
            row[f"rounds_{labels}"] = {s: [r["generated"] for r in v["rounds"]] for s, v in summary["rounds"].items()}
            row[f"labeller_dev_{labels}"], row["majority_dev"] = summary["labeller_dev"], summary["majority_dev"]
        teacher = timed(seconds, "teacher", finetune, args, default_source(), task, teacher_root, args.seeds)
        row["teacher"], row["teacher_ms"], row["seconds"] = teacher["plain"], teacher.get("cpu_latency_ms"), seconds
        if "speed" not in record:  # the models a user deploys: the teacher and the student fine-tuned on one task
            record["speed"] = {"task": task, "machine": machine(),
                               "rows": side_by_side(Path(teacher_dir), out / f"agora-soft{recipe_name}" / task,
                                                   out / f"speed{recipe_name}.json")}
        record["rows"][task] = row
        del record["unfinished_seconds"][task]
        if not record["unfinished_seconds"]:
            del record["unfinished_seconds"]
        save()
        print(f"{task}: row done at {(time.time() - started) / 60:.1f} min: "
              + "; ".join(f"{COLUMNS[c]} {cell(row[c], row['metric'])}" for c in COLUMNS), flush=True)
    rows = [record["rows"][task] for task in ALL_TASKS if task in record["rows"]]
    report(rows, args, record, out)


def choose_arch(args: argparse.Namespace, out: Path) -> str:
    """`bort extract --speedup K --speed measured --init source` from MiniLM: its choice, as D,A,H,I."""
    extract_dir = out / "extract"
    result = bort.extract(output=str(extract_dir), resume=extract_dir.exists(), speedup=args.speedup,
                          speed="measured", init="source")
    chosen, timed_together = result.summary["chosen"], result.summary.get("side_by_side") or [{}]
    speedup = timed_together[-1].get("speedup") or 1 / chosen["ratios_to_source"]["latency"]
    print(f"student architecture {chosen['arch']}: {speedup:.2f}x faster than the source (side by side), ê "
          f"{chosen['surrogate_error']:.4f}; W-optimum {result.summary['w_optimum']['arch']}", flush=True)
    return ",".join(map(str, chosen["arch"].values()))


def side_by_side(teacher: Path, student: Path, path: Path) -> list[dict]:
    """Teacher and student in one `bort bench` run: batch 1 x 128, eager and int8 ONNX Runtime, interleaved."""
    if not path.is_file():
        bort.bench([f"teacher={teacher}", f"student={student}"], runtimes=["torch", "onnx-int8"], batch_sizes=[1],
                   seq_lens=[128], repeats=30, json_path=path, progress=False)
    return json.loads(path.read_text())


def pretrain_student(arch: str, args: argparse.Namespace, out: Path) -> str:
    """`bort pretrain --init source` of the student architecture, distilled from MiniLM (resumable)."""
    folder = out / "student"
    if not (folder / "model.safetensors").is_file():
        bort.pretrain(arch, str(folder), init="source", max_steps=args.pretrain_steps, batch_size=16,
                      max_seq_len=128, resume=folder.exists(), progress=False)
    return str(folder)


def cell(summary: dict, metric: str) -> str:
    return f"{100 * summary['mean'][metric]:.1f} ± {100 * summary['std'][metric]:.1f}"


def report(rows: list[dict], args: argparse.Namespace, record: dict, out: Path) -> None:
    """Markdown table (x100, mean ± std over seeds), averages, the targets' figures, CPU minutes, speed."""
    if not rows:
        return
    header = ["task", "metric", "(a) teacher", *COLUMNS.values(), "machine"]
    setup = record["setup"]
    length = f"{setup['student_steps']} steps" if "student_steps" in setup else "3 epochs"
    lines = [f"student ⟨{setup['arch']}⟩, pre-trained {setup['pretrain_steps']} steps; seeds {setup['seeds']}; "
             f"each student run: {length}",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | {cell(r['teacher'], r['metric'])} | "
                     + " | ".join(cell(r[c], r["metric"]) for c in COLUMNS) + f" | {r['machine']} |")
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
        spread = f"{statistics.stdev(per_seed):.2f}" if len(per_seed) > 1 else "unknown with one seed"
        lines.append(f"(e) - (d) on the scarce tasks: {statistics.mean(per_seed):+.2f} points (per seed "
                     f"{', '.join(f'{d:+.2f}' for d in per_seed)}; spread {spread}; target >= +1.0 and above the "
                     "spread)")
    wins = [r["task"] for r in rows if score(r, best) > score(r, "teacher")]
    lines.append(f"tasks where {COLUMNS[best]} beats the teacher: {len(wins)} ({', '.join(wins) or 'none'})")
    cpu = {k: sum(r["seconds"].get(k, 0) for r in rows) / 60 for k in ("teacher", "agora_hard", "agora_soft")}
    lines.append(f"CPU minutes (wall, 2 cores): teachers {cpu['teacher']:.0f}; hard-label Agora run with control (b), "
                 f"(f) {cpu['agora_hard']:.0f}; soft-label Agora run with controls (c), (d), (e) "
                 f"{cpu['agora_soft']:.0f}; student pre-training {record.get('student_seconds', 0) / 60:.0f} (once "
                 "per session)")
    speed = record.get("speed", {"rows": []})
    ms = {(r["model"], r["runtime"]): r["median_ms"] for r in speed["rows"] if r.get("median_ms")}
    for runtime in ("torch", "onnx-int8"):
        if ("teacher", runtime) in ms and ("student", runtime) in ms:
            t, st = ms[("teacher", runtime)], ms[("student", runtime)]
            lines.append(f"speed side by side ({runtime}, batch 1 x 128, median, {speed['task']} models, "
                         f"{speed['machine']}): teacher {t:.2f} ms, student {st:.2f} ms: {t / st:.1f}x (target >= 4x)")
    text = "\n".join(lines)
    print(text)
    io.write_text(out / "results.md", text + "\n")


if __name__ == "__main__":
    main()
