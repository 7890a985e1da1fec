"""Does task distillation's hidden-state term help the student? `bort finetune --teacher` with --hidden-weight 0
(logits only) against --hidden-weight W, the same student, teacher, seeds and optimizer steps.

It shares `bench_student.py`'s folder and recipe: the teacher of a task is `<output>/teacher/<task>` (MiniLM fine-tuned
on the full train split, seed 0; trained here if missing, and then reused by bench_student), the student is
`<output>/student` (bench_student's pre-trained student; pass --student for another). Resumable: rerun the command.

    python benchmarks/bench_hidden.py --output /root/bort-runs/bench-student --tasks STS-B MRPC
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path

import bort
from bench_student import ALL_TASKS, REPO, machine, recipe
from bort import io
from bort.io import default_source
from bort.tasks import get_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("BORT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--output", default=str(REPO / "runs" / "bench-student"))
    p.add_argument("--student", help="default: <output>/student")
    p.add_argument("--tasks", nargs="+", default=["STS-B", "MRPC"], choices=ALL_TASKS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--hidden-weight", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=3, help="the student's (the teacher keeps bench_student's 3); the "
                                                         "hidden term costs about 2x per step, so compare it with "
                                                         "logits only at twice the epochs too")
    p.add_argument("--sst2-train", type=int, default=20_000)
    args = p.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("bort").setLevel(logging.INFO)
    out = Path(args.output)
    student = args.student or str(out / "student")
    if not (Path(student) / "model.safetensors").is_file():
        raise SystemExit(f"{student} holds no pre-trained student; run benchmarks/bench_student.py first (or pass "
                         "--student DIR)")
    lines = [f"student {student}; seeds {args.seeds}; {machine()}",
             "| task | metric | teacher | student epochs | logits only | "
             f"+ hidden states (weight {args.hidden_weight:g}) | minutes |",
             "|---|---|---|---|---|---|---|"]
    for task in args.tasks:
        metric, teacher_root = get_task(task).metrics[0], out / "teacher" / task
        teacher = bort.finetune(default_source(), task, str(teacher_root), resume=teacher_root.exists(),
                                **recipe(args, task, [0])).summary
        cells, minutes = [], []
        for weight in (0.0, args.hidden_weight):
            name = f"{task}-w{weight:g}" + (f"-e{args.epochs}" if args.epochs != 3 else "")
            folder, start = out / "hidden" / name, time.time()
            run = bort.finetune(student, task, str(folder), resume=folder.exists(),
                                **{**recipe(args, task, args.seeds), "epochs": args.epochs},
                                teacher=str(teacher_root / "plain" / "seed-0"), hidden_weight=weight).summary
            minutes.append((time.time() - start) / 60)
            scores = [100 * s[metric] for s in run["distilled"]["seeds"].values()]
            cells.append(f"{statistics.mean(scores):.1f}" + (f" ± {statistics.stdev(scores):.1f}"
                                                              if len(scores) > 1 else ""))
        lines.append(f"| {task} | {metric} | {100 * teacher['plain']['mean'][metric]:.1f} | {args.epochs} | "
                     f"{cells[0]} | {cells[1]} | {minutes[0]:.1f} / {minutes[1]:.1f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    io.write_text(out / "hidden" / f"results-e{args.epochs}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
