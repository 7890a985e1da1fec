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
    python benchmarks/bench_surrogate.py --extract runs/x --also 2,6,192,768 --repeat-seeds 1 2  # one more
        # architecture, and every one fine-tuned with two more seeds (how much of the order is noise)
    python benchmarks/bench_surrogate.py --report      # the table and ρ of the committed rows, training nothing

Beside ρ it prints where a low ρ comes from: ρ per task, whether ê ranks the held-out loss that the full
pre-training budget reaches (the surrogate's own job), whether that loss ranks the scores, and the seeds' spread.
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
    must = {arch_key(result["chosen"]["arch"], names), arch_key(result["w_optimum"]["arch"], names)}
    picked = [r for r in front if arch_key(r, names) in must]
    rest = [r for r in front if arch_key(r, names) not in must]
    step = max(1, len(rest) / max(1, count - len(picked)))
    picked += [rest[int(i * step)] for i in range(min(len(rest), count - len(picked)))]
    return [candidate_row(r, names) for r in picked]


def arch_key(arch: dict, names: list[str]) -> str:
    return ",".join(str(arch[n]) for n in names)


def candidate_row(row: dict, names: list[str]) -> dict:
    return {"arch": arch_key(row, names), "error": float(row["surrogate_error"]),
            "ops": int(row["ops"])}


def named_candidate(extract: Path, arch: str) -> dict:
    """The candidate `arch` (D,A,H,I) of a finished search, for --also."""
    names = list(json.loads((extract / "result.json").read_text())["chosen"]["arch"])
    with open(extract / "candidates.csv") as f:
        rows = [candidate_row(r, names) for r in csv.DictReader(f)]
    found = [r for r in rows if r["arch"] == arch and r["error"] == r["error"]]  # not a diverged one (NaN)
    if not found:
        raise SystemExit(f"--also {arch}: not a trained candidate of the search in {extract}")
    return found[0]


def pretrain_loss(folder: Path) -> float | None:
    """The held-out distillation loss at the end of an architecture's pre-training (ê's own quantity after the full
    budget instead of the surrogate's few steps), or None before its pre-training has finished."""
    path = folder / "pretrain" / "metrics.jsonl"
    evals = [r for r in io.read_jsonl(path) if r["kind"] == "eval"] if path.is_file() else []
    return evals[-1]["loss"] if evals and (folder / "pretrain" / "model.safetensors").is_file() else None


def task_scores(folder: Path, tasks: list[str], seed: int, args: argparse.Namespace) -> dict[str, float]:
    """Fine-tune the pre-trained architecture in `folder` on each task with one seed; its official-dev score x100."""
    scores = {}
    for task in tasks:
        run = folder / (task if seed == 0 else f"{task}-seed-{seed}")  # seed 0's folders predate repeats
        summary = bort.finetune(str(folder / "pretrain"), task, str(run), resume=run.exists(), seeds=[seed],
                                data_dir=args.data_dir, epochs=3, lr=3e-4, batch_size=32, max_seq_len=128,
                                max_train_samples=args.sst2_train if task == "SST-2" else None,
                                measure_latency=False, progress=False).summary
        scores[task] = 100 * summary["plain"]["mean"][get_task(task).metrics[0]]
    return scores


def spearman(xs: list[float], ys: list[float]) -> float:
    return compute(["spearman"], xs, ys)["spearman"]


def diagnosis(rows: list[dict], tasks: list[str]) -> list[str]:
    """Where a low ρ comes from: does ê rank the pre-training loss the full budget reaches (the surrogate's own
    job), does that loss rank the scores (the objective), each task on its own, and the fine-tuning seeds' noise."""
    lines = [f"ρ(−ê, {t}): {spearman([-r['error'] for r in rows], [r['scores'][t] for r in rows]):.2f}"
             for t in tasks]
    full = [r for r in rows if r.get("pretrain_loss") is not None]
    if len(full) >= 3:
        lines.append(f"ρ(−ê, −pre-training loss at the end) over {len(full)}: "
                     f"{spearman([-r['error'] for r in full], [-r['pretrain_loss'] for r in full]):.2f}")
        lines.append(f"ρ(−pre-training loss at the end, mean dev score) over {len(full)}: "
                     f"{spearman([-r['pretrain_loss'] for r in full], [r['mean'] for r in full]):.2f}")
    averaged = [r for r in rows if r.get("repeats")]
    for r in averaged:
        means = [r["mean"]] + [statistics.mean(s.values()) for s in r["repeats"].values()]
        seeds = ", ".join(["0", *r["repeats"]])
        lines.append(f"{r['arch']}: mean dev over seeds {seeds}: {statistics.mean(means):.1f} ± "
                     f"{statistics.stdev(means):.1f} (per seed {', '.join(f'{m:.1f}' for m in means)})")
    if len(averaged) >= 3:  # the ground truth with the fine-tuning seeds' noise averaged out
        def over(r: dict, t: str) -> float:
            return statistics.mean([r["scores"][t], *(s[t] for s in r["repeats"].values())])

        errors = [-r["error"] for r in averaged]
        lines.append(f"ρ(−ê, mean dev score averaged over seeds) over {len(averaged)}: "
                     f"{spearman(errors, [statistics.mean(over(r, t) for t in tasks) for r in averaged]):.2f}; "
                     + ", ".join(f"{t} {spearman(errors, [over(r, t) for r in averaged]):.2f}" for t in tasks))
    return lines


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
    p.add_argument("--repeat-seeds", type=int, nargs="*", default=[], help="fine-tune finished architectures again "
                   "with these seeds, to measure how much of the score's order is fine-tuning noise")
    p.add_argument("--repeat-archs", nargs="*", help="only these architectures (D,A,H,I) for --repeat-seeds")
    p.add_argument("--also", nargs="*", default=[], help="add these candidates (D,A,H,I) of --extract's search to the "
                   "picked ones, e.g. the choice of the same target timed in another runtime")
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
    for arch in args.also:
        if arch not in [c["arch"] for c in record["picked"]]:
            if not args.extract:
                raise SystemExit("--also needs --extract, the search whose candidate it adds")
            record["picked"].append(named_candidate(Path(args.extract), arch))
    save = lambda: io.write_text(record_path, json.dumps(record, indent=1) + "\n")  # noqa: E731
    for cand in [] if args.report else record["picked"]:
        folder = out / cand["arch"].replace(",", "-")
        if cand["arch"] not in record["rows"]:
            if not (folder / "pretrain" / "model.safetensors").is_file():
                bort.pretrain(cand["arch"], str(folder / "pretrain"), init="source", max_steps=args.pretrain_steps,
                              batch_size=16, max_seq_len=128, resume=(folder / "pretrain").exists(), progress=False)
            scores = task_scores(folder, args.tasks, 0, args)
            record["rows"][cand["arch"]] = {**cand, "scores": scores, "mean": statistics.mean(scores.values()),
                                            "machine": machine()}
            print(f"{cand['arch']}: ê {cand['error']:.4f}, mean dev {record['rows'][cand['arch']]['mean']:.1f} "
                  f"({(time.time() - started) / 60:.0f} min)", flush=True)
        row = record["rows"][cand["arch"]]
        if row.get("pretrain_loss") is None and pretrain_loss(folder) is not None:
            row["pretrain_loss"] = pretrain_loss(folder)
        for seed in args.repeat_seeds if args.repeat_archs is None or cand["arch"] in args.repeat_archs else []:
            if str(seed) not in row.setdefault("repeats", {}) and seed != 0:
                row["repeats"][str(seed)] = task_scores(folder, args.tasks, seed, args)
                print(f"{cand['arch']} seed {seed}: mean dev {statistics.mean(row['repeats'][str(seed)].values()):.1f}"
                      f" ({(time.time() - started) / 60:.0f} min)", flush=True)
                save()
        save()
    rows = list(record["rows"].values())
    lines = [f"{args.pretrain_steps} pretrain steps each; tasks {', '.join(args.tasks)}; fine-tuning seed 0",
             "| D,A,H,I | GFLOPs | ê | pre-training loss | " + " | ".join(args.tasks) + " | mean | machine |",
             "|---" * (len(args.tasks) + 6) + "|"]
    lines += [f"| {r['arch']} | {r['ops'] / 1e9:.3f} | {r['error']:.4f} | "
              + (f"{r['pretrain_loss']:.4f}" if r.get("pretrain_loss") is not None else "-") + " | "
              + " | ".join(f"{r['scores'][t]:.1f}" for t in args.tasks) + f" | {r['mean']:.1f} | {r['machine']} |"
              for r in rows]
    lines.append(f"Spearman(−ê, mean dev score) over {len(rows)} of {len(record['picked'])} architectures: "
                 f"{spearman([-r['error'] for r in rows], [r['mean'] for r in rows]):.2f} (target >= 0.6)")
    text = "\n".join(lines + diagnosis(rows, args.tasks))
    print(text)
    if not args.report:
        io.write_text(out / "results.md", text + "\n")


if __name__ == "__main__":
    main()
