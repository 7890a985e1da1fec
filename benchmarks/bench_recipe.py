"""The student's task-distillation recipe: `bort finetune --teacher` of the same pre-trained student from the same
teacher, under several recipes (learning rate, epochs, the hidden-state term, α, T, --augment), side by side per task.

bench_student's rows showed the 2-layer student far below its teacher where the task needs more than 3 epochs at one
learning rate (STS-B 72%, CoLA 42% of the teacher), and the hidden-state comparison of RESULTS.md (the recipes
`epochs=3` / `epochs=3,hidden=1`) that STS-B was still gaining at 7 epochs. This asks which recipe closes the gap
before the expensive Agora rows are run again with it.

It shares `bench_student.py`'s folder and recipe: the teacher of a task is `<output>/teacher/<task>` (MiniLM fine-tuned
on the full train split, seed 0; trained here if missing, and then reused by bench_student), the student is
`<output>/student` (bench_student's pre-trained student; pass --student DIR --label NAME for another, whose runs
are recorded as NAME:RECIPE). Every student run trains on the full official train split and is scored on the
official dev split. Finished runs go into --record (small JSON, committed), so the study continues across sessions;
two processes may share a record (different --tasks), each save merges under a lock. Resumable: rerun the command.

    python benchmarks/bench_recipe.py --output /root/bort-runs/bench-student --tasks STS-B MRPC CoLA \
        --recipes lr=3e-4,epochs=3 lr=3e-4,epochs=10 lr=1e-3,epochs=10
    python benchmarks/bench_recipe.py --report          # the table of the record, training nothing
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import statistics
import time
from pathlib import Path

import bort
from bench_student import ALL_TASKS, REPO, finetune, machine, recipe
from bort import io
from bort.io import default_source
from bort.tasks import get_task

KEYS = {"lr": float, "epochs": float, "hidden": float, "alpha": float, "temperature": float, "augment": float}
OPTION = {"hidden": "hidden_weight"}  # the recipe's short names for bort.finetune's options


def parse(text: str) -> dict[str, float]:
    """'lr=3e-4,epochs=10' -> {'lr': 0.0003, 'epochs': 10.0}; unknown keys are refused."""
    pairs = [part.split("=", 1) for part in text.split(",") if part]
    if any(len(p) != 2 or p[0] not in KEYS for p in pairs):
        raise SystemExit(f"recipe '{text}': use KEY=VALUE pairs joined by commas, KEY one of {', '.join(KEYS)}")
    return {k: KEYS[k](v) for k, v in pairs}


def save(path: Path, task: str, name: str, entry: dict) -> None:
    """Merge one finished run into the record under a lock (another process may hold other tasks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
        record["rows"].setdefault(task, {})[name] = entry
        io.write_text(path, json.dumps(record, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("BORT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--output", default=str(REPO / "runs" / "bench-student"))
    p.add_argument("--student", help="default: <output>/student")
    p.add_argument("--label", help="a name for --student, put before each recipe's name in the record and its run "
                   "folder, so another student's runs stand beside the default's (needed with --student)")
    p.add_argument("--tasks", nargs="+", default=["STS-B", "MRPC", "CoLA"], choices=ALL_TASKS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--recipes", nargs="+", default=["lr=3e-4,epochs=3", "lr=3e-4,epochs=10", "lr=1e-3,epochs=10"],
                   help="each KEY=VALUE,...: lr, epochs, hidden (the hidden-state weight), alpha, temperature, augment "
                        "(--augment N: teacher-labelled points, N x the train set; epochs count passes over both); the "
                        "rest is bench_student's recipe (batch 32 x 128, α 0.5, T 2, logits only)")
    p.add_argument("--record", default=str(REPO / "benchmarks" / "results" / "bench_recipe.json"))
    p.add_argument("--sst2-train", type=int, default=20_000)
    p.add_argument("--report", action="store_true", help="print the record's table and stop")
    args = p.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("bort").setLevel(logging.INFO)
    record_path = Path(args.record)
    if not args.report:
        train(args, record_path)
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"rows": {}}
    print(table(record))


def train(args: argparse.Namespace, record_path: Path) -> None:
    """Every (task, recipe) the record lacks, for the seeds asked."""
    out = Path(args.output)
    student = args.student or str(out / "student")
    if args.student and not args.label:
        raise SystemExit("--student needs --label NAME, so its runs do not mix with the default student's")
    if not (Path(student) / "model.safetensors").is_file():
        raise SystemExit(f"{student} holds no pre-trained student; run benchmarks/bench_student.py first (or pass "
                         "--student DIR)")
    recipes = {name: parse(name) for name in args.recipes}
    prefix = f"{args.label}:" if args.label else ""
    for task in args.tasks:
        metric, teacher_root = get_task(task).metrics[0], out / "teacher" / task
        teacher = finetune(args, default_source(), task, teacher_root, [0])
        for settings_name, settings in recipes.items():
            name = prefix + settings_name
            done = json.loads(record_path.read_text())["rows"].get(task, {}) if record_path.is_file() else {}
            if name in done and done[name]["seeds"] == args.seeds:
                continue
            folder = out / "recipe" / task / name.replace(",", "_").replace("=", "-").replace(":", "-")
            start = time.time()
            options = {**recipe(args, task, args.seeds), **{OPTION.get(k, k): v for k, v in settings.items()}}
            run = bort.finetune(student, task, str(folder), resume=folder.exists(),
                                teacher=str(teacher_root / "plain" / "seed-0"), **options).summary
            scores = {str(s): run["distilled"]["seeds"][str(s)][metric] for s in args.seeds}
            entry = {"student": student, "metric": metric, "teacher": teacher["plain"]["mean"][metric],
                     "seeds": args.seeds,
                     "scores": scores, "minutes": (time.time() - start) / 60, "machine": machine(),
                     "date": time.strftime("%Y-%m-%d")}
            save(record_path, task, name, entry)
            print(f"{task} {name}: {100 * statistics.mean(scores.values()):.1f} (teacher "
                  f"{100 * entry['teacher']:.1f}) in {entry['minutes']:.1f} min", flush=True)


def table(record: dict) -> str:
    """Task x recipe: mean (± std over seeds) x100 and the share of the teacher; the mean share per recipe."""
    names = list(dict.fromkeys(n for runs in record["rows"].values() for n in runs))  # in the order they ran
    lines = ["| task | metric | teacher | " + " | ".join(names) + " |", "|" + "---|" * (3 + len(names))]
    shares: dict[str, list[float]] = {n: [] for n in names}
    for task, runs in record["rows"].items():
        first = next(iter(runs.values()))
        cells = []
        for n in names:
            if n not in runs:
                cells.append("")
                continue
            scores = [100 * s for s in runs[n]["scores"].values()]
            share = statistics.mean(scores) / (100 * runs[n]["teacher"])
            shares[n].append(share)
            spread = f" ± {statistics.stdev(scores):.1f}" if len(scores) > 1 else ""
            cells.append(f"{statistics.mean(scores):.1f}{spread} ({share:.0%}, {runs[n]['minutes']:.0f} min)")
        lines.append(f"| {task} | {first['metric']} | {100 * first['teacher']:.1f} | " + " | ".join(cells) + " |")
    lines.append("| mean share of the teacher | | | " + " | ".join(
        f"{statistics.mean(v):.1%} over {len(v)}" if v else "" for v in shares.values()) + " |")
    machines = sorted({r["machine"] for runs in record["rows"].values() for r in runs.values()})
    return "\n".join(lines + [f"machines: {'; '.join(machines)}"])


if __name__ == "__main__":
    main()
