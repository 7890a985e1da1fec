"""Does the student's starting point matter for the task? `bort run`'s student stage again from other starts.

A `bort run` student is sliced from the source, pre-trained by general distillation (stage 3), then task-distilled
(stage 4). On MRPC that student stays below the constant guess. This asks whether stage 3 or the slice is the cause:
it repeats stage 4 exactly (the run's teacher, learning rate, steps, batch, seed) from two other starts of the same
architecture, and prints them beside the run's own student:

* `source slice`: the source sliced into the architecture (`--init source`), with no general distillation;
* `teacher slice`: the run's fine-tuned teacher sliced into it (its classifier head too), the DistilBERT-style start
  from a model that already solves the task.

    python benchmarks/bench_init.py --run /root/bort-runs/bench-run-corpus3/MRPC --output /root/bort-runs/bench-init
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

import bort
from bench_student import machine
from bort import io
from bort.distill.init import slice_into
from bort.families.bert import BertFamily
from bort.tasks import finetune as ft
from bort.tasks import get_task

REPO = Path(__file__).resolve().parents[1]


def sliced(source: str, arch: dict[str, int], folder: Path) -> Path:
    """`source` (a base model or a classifier) cut into `arch` as a classifier folder that `bort finetune` loads."""
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)  # a base-model source gets a random classifier head, which the slice copies: seeded
    with io.quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(source)
    config = BertFamily(model.config).config(tuple(arch[k] for k in BertFamily.param_names))  # labels kept
    student = AutoModelForSequenceClassification.from_config(config)
    slice_into(student, model)
    folder.mkdir(parents=True, exist_ok=True)
    io.save_model(folder, student, io.load_tokenizer(source))
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished `bort run` output folder")
    p.add_argument("--output", default=str(REPO / "runs" / "bench-init"))
    p.add_argument("--data-dir", default=os.environ.get("BORT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    args = p.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("bort").setLevel(logging.INFO)
    run, out = Path(args.run), Path(args.output)
    s, plan = io.read_json(run / "summary.json"), io.read_json(run / "plan.json")
    task, arch = s["task"], s["architecture"]
    spec = get_task(task)
    metrics = spec.metrics
    guess = ft.majority_score(spec, ft.load_data(spec, args.data_dir))  # runs before 2026-12-05 lack majority_dev
    starts = {"source slice": s["source"], "teacher slice": s["teacher"]["folder"]}
    rows = {"pre-trained (the run's student)": s["student"]["dev"]}
    for name, source in starts.items():
        model = sliced(source, arch, out / name.replace(" ", "-") / "start")
        folder = out / name.replace(" ", "-") / "student"
        done = bort.finetune(model, task, folder, teacher=s["teacher"]["folder"], lr=3e-4, seeds=[0],
                             max_steps=s["student"]["steps"], batch_size=plan["batch_size"], data_dir=args.data_dir,
                             resume=folder.exists(), progress=False, measure_latency=False)
        rows[name] = done.summary["distilled"]["seeds"]["0"]
    shape = f"<{arch['D']}, {arch['A']}, {arch['H']}, {arch['I']}>"
    print(f"machine: {machine()}\n{task}, student {shape}, {s['student']['steps']} steps of task distillation, seed 0")
    print("| start | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics))
    for name, dev in {"teacher": s["teacher"]["dev"], **rows, "constant guess": guess}.items():
        print(f"| {name} | " + " | ".join(f"{100 * dev[m]:.1f}" for m in metrics) + " |")


if __name__ == "__main__":
    main()
