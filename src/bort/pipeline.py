"""`bort run`: from a source model and a task to a deployable small model and a report, in six resumable stages.

1. teacher/   the source fine-tuned on the task (skipped with --teacher DIR, used as given);
2. extract/   the search with the user's target (--speedup, --max-latency-ms, --max-params);
3. pretrain/  general distillation of the chosen architecture from the source, sliced from it (--init source), on
              --corpus or, by default, the task's train text and Python's documentation (corpus/);
4. student/   task distillation from the teacher (with Agora and soft labels when --agora);
5. onnx/      fp32 and int8 export; int8 is kept only within 1 point of fp32 on the dev split;
6. report.md, report.html and summary.json: teacher vs student, timed side by side.

The budget: each stage gets a share of --budget-minutes (SHARES; without a teacher stage its share goes to the
others in proportion), turned into optimizer steps by timing a few steps of the stage's own training: the source's
fine-tuning when the run starts, the chosen architecture's pre-training and fine-tuning when their stages start
(less the teacher's outputs, computed once); the search fits its share by its own calibration. What the teacher (at
most 3 epochs) and the search (at most n(ε) steps) leave goes to pre-training and the student. plan.json keeps the
plan and every timing, so a rerun continues with the same steps.
Each stage records the options it depends on, chained to the stage before it: rerunning the same command skips
finished stages and continues the one it reached; a changed option re-runs from the first stage it affects, and
every stage after it.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bort import io
from bort.agora.rounds import agora, agora_splits
from bort.config import (
    AgoraConfig,
    BenchConfig,
    ExportConfig,
    ExtractConfig,
    FinetuneConfig,
    PipelineConfig,
    PretrainConfig,
    make,
    task_files,
)
from bort.distill.data import check_corpus, default_text
from bort.distill.pretrain import pretrain
from bort.errors import BortError
from bort.families.bert import BertFamily
from bort.search.extraction import build_search, extract, fit_steps
from bort.search.fptas import Constraints
from bort.speed.bench import bench
from bort.speed.export import export, ort_session, require_onnx
from bort.tasks import finetune as ft
from bort.tasks.metrics import compute
from bort.tasks.registry import Task, unlabelled_text

log = logging.getLogger("bort")
STAGES = ("teacher", "extract", "pretrain", "student", "onnx", "report")
SHARES = {"teacher": 0.30, "extract": 0.15, "pretrain": 0.33, "student": 0.20, "onnx": 0.02}  # ONNX used 0.5% on MRPC
PRETRAIN_BATCH, TASK_BATCH, STUDENT_ROUNDS = (16, 128), 32, 3
# a timing run (`_probe`): a few steps, each logged, nothing saved or shown
PROBE = {"max_steps": 8, "log_every": 1, "save_every": 0, "progress": False}
PLAN_FILE = "plan.json"
IMAGES = ("speed.png", "extract/pareto.png", "pretrain_curve.png")  # relative to the run folder
RUNTIME_NAMES = {"torch": "PyTorch eager", "onnx": "ONNX Runtime fp32", "onnx-int8": "ONNX Runtime int8"}


@dataclass
class RunResult:
    """What `bort run` made; `summary` is what summary.json holds."""

    output: Path
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.summary


@dataclass
class Context:
    """What the stages read: the options, the plan, the source, task and data resolved once, the run folder, and
    the results of the stages before."""

    config: PipelineConfig
    plan: dict[str, Any]
    source: str
    task: Task
    data: ft.TaskData
    out: Path
    results: dict[str, Any]


def run(config: PipelineConfig) -> RunResult:
    """Every stage of `bort run` in order (see the module doc); the last one's summary is the result."""
    source = str(config.source) if config.source else io.default_source()
    if source in io.PRESETS:
        raise BortError(f"--source {source} is an architecture preset without weights, and bort run distils from "
                        "its source: pass a pretrained model folder or hub name (e.g. bert-base-uncased)")
    task = ft.resolve_task(config.task, **task_files(config))
    data = ft.load_data(task, config.data_dir, config.max_train_samples)
    ft.task_tokenizer(source, config.max_seq_len)  # --max-seq-len fits the source
    ft.check_teacher(config.teacher, None, task, config.max_seq_len)
    check_corpus(config.corpus)
    require_onnx()
    if config.agora:  # Agora's dev split (and its held-out half) must be carvable from this train split
        agora_splits(task, data.train, AgoraConfig.__dataclass_fields__["agora_dev_fraction"].default)
    family = BertFamily(source)
    _check_targets(family, config, source)
    # the same command continues its run: stage records keep results made with other options apart
    resume = config.resume or (not config.overwrite and io.is_main() and io.run_command(config.output) == "run")
    out = io.prepare_output(config.output, "run", resume, config.overwrite,
                            (config.source, config.data_dir, config.train_file, config.dev_file, config.teacher,
                             *config.corpus))
    config = _with_corpus(config, out, data)
    with io.alone_on_main() as main:  # the plan times the source and the search on process 0
        plan = _plan(out, config, family, task, data, source) if main else None
    plan = io.broadcast(plan)
    records_path = out / "stages.json"
    records = io.broadcast(io.read_json(records_path) if io.is_main() and records_path.is_file() else {})
    started, chain, results = time.perf_counter(), "", {}
    ctx = Context(config, plan, source, task, data, out, results)
    for number, stage in enumerate(STAGES, 1):
        options = _stage_options(stage, config, plan, source)
        chain = hashlib.sha256((chain + json.dumps(options, sort_keys=True, default=str)).encode()).hexdigest()
        record = records.get(stage, {})
        if record.get("key") == chain and record.get("done"):
            log.info(f"stage {number}/{len(STAGES)} {stage}: done earlier, skipped")
            results[stage] = record["result"]
            continue
        if record.get("done"):  # a finished stage made again: say why, since its work is replaced
            changes = io.changed_settings(record.get("options", {}), options)
            log.warning(f"stage {number}/{len(STAGES)} {stage}: finished earlier with other options ("
                        f"{changes or 'its own are the same: what it was made from changed'}); it runs again, and "
                        "every stage after it")
        folder = out / stage
        continuing = io.broadcast(record.get("key") == chain and folder.exists())  # before process 0 makes it
        remaining = sum(plan["minutes"].get(s, 0) for s in STAGES[number - 1:])
        log.info(f"stage {number}/{len(STAGES)} {stage}: {'continuing' if continuing else 'starting'} "
                 f"({plan['minutes'].get(stage, 0):.1f} min planned; {(time.perf_counter() - started) / 60:.1f} min "
                 f"elapsed, ~{remaining:.1f} min predicted to go)")
        records[stage] = {"key": chain, "done": False, "options": options}
        for later in STAGES[number:]:  # made from what this stage is about to replace
            records.pop(later, None)
        if io.is_main():
            io.write_json(records_path, records)
        tick = time.perf_counter()
        results[stage] = io.broadcast(_run_stage(stage, ctx, continuing))
        records[stage] = {**records[stage], "done": True, "seconds": round(time.perf_counter() - tick, 1),
                          "result": results[stage]}
        log.info(f"stage {number}/{len(STAGES)} {stage}: finished in {records[stage]['seconds'] / 60:.1f} min "
                 f"({plan['minutes'].get(stage, 0):.1f} min planned)")
        if io.is_main():
            io.write_json(records_path, records)
    return RunResult(out, results["report"])


def _run_stage(stage: str, ctx: Context, continuing: bool) -> dict[str, Any] | None:
    """One stage's result on process 0 (None elsewhere). The training stages run on every process, as the commands
    they call do; ONNX export, its scoring and the side-by-side timing run on process 0 alone."""
    if stage in ("onnx", "report"):
        with io.alone_on_main() as main:
            return STAGE_RUNNERS[stage](ctx, continuing) if main else None
    result = STAGE_RUNNERS[stage](ctx, continuing)
    return result if io.is_main() else None


def _with_corpus(config: PipelineConfig, out: Path, data: ft.TaskData) -> PipelineConfig:
    """The corpus the search and the pre-training read: --corpus, or by default the task's own unlabelled train text
    beside bort's default corpus (Python's documentation), written into the run's corpus/ folder. The corpus was the
    largest lever measured on the student (RESULTS.md, "which corpus"), and the task's text is in every run's hands.
    Each file is named by its content's hash, so a changed train split is another file (its stages re-run) and an
    unchanged one is never rewritten (its token cache stays valid)."""
    if config.corpus:
        return config
    folder, files = out.resolve() / "corpus", []
    for stem, text in (("train-text", unlabelled_text(data.train)), ("python-docs", default_text())):
        files.append(path := folder / f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.txt")
        if io.is_main() and not path.is_file():
            io.write_text(path, text)
    io.barrier()
    return replace(config, corpus=[str(f) for f in files])


def _targets(config: PipelineConfig) -> Constraints:
    return Constraints(None if config.max_params is None else int(config.max_params), None, config.max_latency_ms,
                       config.speedup)


def _check_targets(family: BertFamily, config: PipelineConfig, source: str) -> None:
    """An unmeetable target is one line before any stage: the search's own check (`build_search` refuses it), with
    a stand-in surrogate so nothing is trained or loaded. With measured speed it times every candidate first (cached
    for the search), which is minutes in ONNX Runtime and outside every stage's share, so its time is printed."""
    started = time.perf_counter()
    build_search(family, _extract_config(config, source), lambda *a: 1.0)
    if (seconds := time.perf_counter() - started) > 10:
        log.info(f"target checked in {seconds / 60:.1f} min (every candidate timed in {config.latency_runtime}, "
                 "cached for the search)")


def _plan(out: Path, config: PipelineConfig, family: BertFamily, task: Task, data: ft.TaskData,
          source: str) -> dict[str, Any]:
    """Steps and minutes per stage (see the module doc), fixed at the run's start and kept in plan.json."""
    path = out / PLAN_FILE
    saved = io.read_json(path) if path.is_file() else {}
    measured_on = io.strict_json({"source": source, "task": config.task, "data": [config.data_dir, task_files(config)],
                                  "max_train_samples": config.max_train_samples, "max_seq_len": config.max_seq_len})
    planned_for = io.strict_json({"budget_minutes": config.budget_minutes, "given_teacher": bool(config.teacher),
                                  "search": _extract_config(config, source).identity()})
    if saved.get("measured_on") == measured_on and saved.get("planned_for") == planned_for:
        _log_plan(saved, "kept from plan.json")  # the same steps as when the run started
        return saved
    # another budget or target re-plans from the same measured step (and re-runs what it changes)
    same_data = saved.get("measured_on") == measured_on
    step = saved.get("step_seconds") if same_data else None
    step = step or _probe(out, "source", lambda output, quiet: ft.train(source, task, data.train, _teacher_settings(
        config, source, output=str(output), **quiet), output))
    shares = {k: v for k, v in SHARES.items() if k != "teacher" or not config.teacher}
    minutes = {k: config.budget_minutes * v / sum(shares.values()) for k, v in shares.items()}
    batch, length = TASK_BATCH, config.max_seq_len
    per_epoch = math.ceil(len(data.train) / batch)
    teacher_steps = max(1, min(3 * per_epoch, int(minutes.get("teacher", 0) * 60 / step)))
    # the search's own calibration (the surrogate timed on the median candidate) fits n into its share
    search_steps, search_seconds = fit_steps(family, _extract_config(config, source), minutes["extract"] * 60)
    # what the teacher (at most 3 epochs) and the search (at most n(ε)) leave of their shares goes to pre-training
    # and the student, in proportion to theirs, so the whole budget is used
    spent = {"teacher": teacher_steps * step / 60, "extract": search_seconds / 60}
    spare = sum(minutes[k] - spent[k] for k in spent if k in minutes)
    for k in ("pretrain", "student"):
        minutes[k] = max(0.0, minutes[k] + spare * SHARES[k] / (SHARES["pretrain"] + SHARES["student"]))
    minutes.update({k: v for k, v in spent.items() if k in minutes})
    plan = {"budget_minutes": config.budget_minutes, "measured_on": measured_on, "planned_for": planned_for,
            "step_seconds": round(step, 4), "minutes": {k: round(v, 4) for k, v in minutes.items()},
            "teacher_steps": teacher_steps, "search_steps": search_steps, "batch_size": batch, "seq_len": length,
            "probed_step_seconds": saved.get("probed_step_seconds", {}) if same_data else {}}
    _save_plan(out, plan)
    _log_plan(plan, f"one training step of the source takes {step:.2f} s")
    return plan


def _log_plan(plan: dict[str, Any], how: str) -> None:
    log.info(f"plan for {plan['budget_minutes']:g} min ({how}): "
             + ", ".join(f"{k} {v:.1f} min" for k, v in plan["minutes"].items())
             + (f"; teacher {plan['teacher_steps']} steps" if "teacher" in plan["minutes"] else "")
             + f"; search n = {plan['search_steps']} steps per finalist; the pre-training and student steps follow "
             "from the chosen architecture and are printed when their stage starts")


def _teacher_settings(config: PipelineConfig, source: str, **run: Any) -> FinetuneConfig:
    """The teacher's fine-tuning (the source on the task, seed 0), as its stage runs it and as the plan times it."""
    return make(FinetuneConfig, model=source, task=config.task, **_data(config), seeds=[0], lr=1e-4,
                batch_size=TASK_BATCH, measure_latency=False, **run)


def _save_plan(out: Path, plan: dict[str, Any]) -> None:
    io.write_json(out / PLAN_FILE, plan)


def _probe(out: Path, name: str, train: Callable[[Path, dict[str, Any]], Any]) -> float:
    """Seconds per optimizer step of a stage's own training, from a short run of it (`train(folder, PROBE)`, PROBE
    being the settings to lay over the stage's) in a scratch folder of the run: the median of the engine's logged
    step times, so the first steps, which pay one-off costs (on a GPU, several of them), are left out. Small students
    run well below the source's operations per second, so scaling the source's step by operation count misjudged
    them (by a third on MRPC)."""
    with tempfile.TemporaryDirectory(prefix=f".probe-{name}-", dir=out) as scratch:
        train(Path(scratch) / "run", PROBE)
        elapsed = [r["elapsed_s"] for r in io.read_jsonl(Path(scratch) / "run" / "metrics.jsonl")
                   if r.get("kind") == "train"]
    return round(statistics.median(b - a for a, b in itertools.pairwise(elapsed)), 4)


def _stage_options(stage: str, config: PipelineConfig, plan: dict[str, Any], source: str) -> dict[str, Any]:
    """What each stage depends on (the stage before it is chained in by `run`)."""
    common = {"source": source, "task": config.task, "data": [config.data_dir, task_files(config)],
              "max_train_samples": config.max_train_samples, "max_seq_len": config.max_seq_len}
    return {"teacher": {**common, "teacher": config.teacher, "steps": plan.get("teacher_steps")},
            "extract": {"source": source, "targets": [config.speedup, config.max_latency_ms, config.max_params],
                        "speed": config.speed, "corpus": config.corpus, "steps": plan["search_steps"],
                        # identity() leaves a newer option out at its default, so older runs keep their records
                        **{k: v for k, v in config.identity().items() if k == "latency_runtime"}},
            "pretrain": {"corpus": config.corpus, "minutes": plan["minutes"]["pretrain"]},
            "student": {**common, "agora": config.agora, "seeds": config.seeds,
                        "minutes": plan["minutes"]["student"]},
            "onnx": {}, "report": {}}[stage]


# -- the stages ---------------------------------------------------------------------------------------------
def _teacher(ctx: Context, continuing: bool) -> dict[str, Any]:
    config = ctx.config
    if config.teacher:
        return {"folder": str(config.teacher), "given": True}
    folder = ctx.out / "teacher"
    summary = ft.finetune(_teacher_settings(config, ctx.source, output=str(folder), max_steps=ctx.plan["teacher_steps"],
                                            resume=continuing, overwrite=folder.exists() and not continuing,
                                            progress=config.progress))
    return {"folder": str(folder), "given": False, "dev": summary["plain"]["mean"]} if summary else {}


def _extract(ctx: Context, continuing: bool) -> dict[str, Any]:
    folder = ctx.out / "extract"
    found = extract(_extract_config(ctx.config, ctx.source, steps=ctx.plan["search_steps"], output=str(folder),
                                    resume=continuing, overwrite=folder.exists() and not continuing,
                                    progress=ctx.config.progress))
    if not found.summary["target_met"]:
        log.warning(f"no finalist of the search met {found.summary['target']}: the student is the W-optimum "
                    f"{found.summary['chosen']['arch']}; the report says so")
    return {"chosen": found.summary["chosen"], "w_optimum": found.summary["w_optimum"],
            "target_met": found.summary["target_met"], "folder": str(folder / "chosen"),
            "side_by_side": found.summary.get("side_by_side", [])}


def _extract_config(config: PipelineConfig, source: str, **run: Any) -> ExtractConfig:
    """The search of `bort run`: the user's targets, from the source, sliced from it (as the student will be)."""
    return make(ExtractConfig, source=source, speedup=config.speedup, max_params=config.max_params,
                max_latency_ms=config.max_latency_ms, speed=config.speed, latency_runtime=config.latency_runtime,
                init="source", corpus=config.corpus, **run)


def _pretrain(ctx: Context, continuing: bool) -> dict[str, Any]:
    config, folder = ctx.config, ctx.out / "pretrain"

    def settings(output: Path, **run: Any) -> PretrainConfig:
        return make(PretrainConfig, **{"arch": ctx.results["extract"]["folder"], "output": str(output),
                                       "teacher": ctx.source, "init": "source", "corpus": config.corpus,
                                       "batch_size": PRETRAIN_BATCH[0], "max_seq_len": PRETRAIN_BATCH[1],
                                       "progress": config.progress, **run})

    step = _stage_step_seconds(ctx, "pretrain", lambda output, quiet: pretrain(settings(
        output, **quiet, eval_every=0, measure_latency=False)))
    steps = max(1, int(ctx.plan["minutes"]["pretrain"] * 60 / step))
    log.info(f"pretrain: {steps} steps of {_arch_text(ctx)} at {PRETRAIN_BATCH[0]}x{PRETRAIN_BATCH[1]}, "
             f"{step:.3f} s each (~{steps * step / 60:.1f} min predicted)")
    done = pretrain(settings(folder, max_steps=steps, eval_every=max(1, steps // 10), resume=continuing,
                             overwrite=folder.exists() and not continuing))
    return {"folder": str(folder), "steps": steps, "eval": done.eval, "curve": str(folder / "metrics.jsonl"),
            "corpus": config.corpus, "sequences": done.sequences}


def _student(ctx: Context, continuing: bool) -> dict[str, Any]:
    config, plan, folder = ctx.config, ctx.plan, ctx.out / "student"
    common = dict(model=ctx.results["pretrain"]["folder"], task=config.task, **_data(config), lr=3e-4,
                  batch_size=plan["batch_size"], progress=config.progress)
    step = _stage_step_seconds(ctx, "student", lambda output, quiet: ft.train(
        common["model"], ctx.task, ctx.data.train, make(FinetuneConfig, **{**common, **quiet}, output=str(output),
                                                        measure_latency=False), output))
    runs = len(config.seeds) * (STUDENT_ROUNDS + 2 if config.agora else 1)  # Agora: rounds of Θ = 2 sets, pruned
    # the teacher's outputs on the train split, once: a forward pass, about a third of the source's training step
    outputs = math.ceil(len(ctx.data.train) / plan["batch_size"]) * plan["step_seconds"] / 3
    steps = max(1, int((plan["minutes"]["student"] * 60 - outputs) / runs / step))
    log.info(f"student: {runs} training run(s) of {steps} steps, {step:.3f} s each, after the teacher's outputs "
             f"(~{(runs * steps * step + outputs) / 60:.1f} min predicted, plus the dev scores)")
    common.update(output=str(folder), seeds=config.seeds, max_steps=steps, teacher=ctx.results["teacher"]["folder"],
                  resume=continuing, overwrite=folder.exists() and not continuing)
    if config.agora:
        summary = agora(make(AgoraConfig, theta="lr=1e-4,3e-4", rounds=STUDENT_ROUNDS, **common))
        method = "agora"
    else:
        summary = ft.finetune(make(FinetuneConfig, **common))
        method = "distilled"
    if not summary:
        return {}  # off process 0
    best = summary[method]["seeds"][str(summary["best_seed"])]  # the model in student/, which is what is deployed
    return {"folder": str(folder), "steps": steps, "method": method, "dev": best, "best_seed": summary["best_seed"],
            "dev_mean": summary[method]["mean"], "dev_std": summary[method]["std"],
            "teacher_dev": summary.get("teacher_dev") or summary.get("labeller_dev")}


def _stage_step_seconds(ctx: Context, stage: str, train: Callable[[Path, dict[str, Any]], Any]) -> float:
    """`_probe` of a stage's training on the chosen architecture, by process 0 once per architecture; plan.json
    keeps it, so a rerun trains the same steps."""
    key = f"{stage} {_arch_text(ctx)}"
    measured = ctx.plan.setdefault("probed_step_seconds", {})
    if key not in measured:
        with io.alone_on_main() as main:
            seconds = _probe(ctx.out, stage, train) if main else None
        measured[key] = io.broadcast(seconds)
        if io.is_main():
            _save_plan(ctx.out, ctx.plan)
    return measured[key]


def _arch_text(ctx: Context) -> str:
    return ",".join(map(str, ctx.results["extract"]["chosen"]["arch"].values()))


def _onnx(ctx: Context, continuing: bool) -> dict[str, Any]:
    """fp32 and int8 ONNX of the student; int8 is kept only if its official-dev score (the task's main metric,
    classification or regression alike) is within 1 point of fp32's."""
    task = ctx.task
    if task.kind == "multiple_choice":  # export writes the encoder without the choice head: not a deployable model
        return {"folder": None, "kept": None, "int8": False, "dev": {},
                "why": "multiple-choice models are not exported (no choices axis); deploy student/ with PyTorch"}
    folder, metric = ctx.out / "onnx", task.metrics[0]
    report = export(make(ExportConfig, model=ctx.results["student"]["folder"], output=str(folder), quantize="int8",
                         overwrite=folder.exists()))
    scores = {k: _onnx_score(Path(report["files"][k]), folder, task, ctx.data, ctx.config)
              for k in ("onnx", "onnx_int8")}
    keep_int8 = scores["onnx_int8"][metric] >= scores["onnx"][metric] - 0.01
    why = (f"int8 dev {metric} {scores['onnx_int8'][metric]:.4f} vs fp32 {scores['onnx'][metric]:.4f}: "
           + ("within 1 point" if keep_int8 else "more than 1 point lower"))
    kept = report["files"]["onnx_int8" if keep_int8 else "onnx"]
    return {"folder": str(folder), "kept": kept, "int8": keep_int8, "why": why, "dev": scores}


def _onnx_score(model: Path, folder: Path, task, data: ft.TaskData, config: PipelineConfig) -> dict[str, float]:
    """The task's metrics of an ONNX model on the first official dev split, run by onnxruntime."""
    import numpy as np

    session, tokenizer = ort_session(model), io.load_tokenizer(folder)
    names = {i.name for i in session.get_inputs()}
    rows = next(iter(data.dev.values()))
    outputs = [session.run(None, {k: v.numpy() for k, v in ft.encode(tokenizer, task, rows[i:i + 64],
                                                                      config.max_seq_len).items() if k in names})[0]
               for i in range(0, len(rows), 64)]
    raw = np.concatenate(outputs)
    predictions = ft.decide(task, raw[:, 0] if task.kind == "regression" else raw)
    return compute(task.metrics, predictions, [task.label_index(e.label) for e in rows])


def time_pair(teacher: str | Path, student: str | Path, plot: Path | None = None, progress: bool = False
              ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], float], dict[str, float]]:
    """The report's speed figures: teacher and student timed side by side (`bort bench`, batch 1 x 128, 20 runs)
    in PyTorch, ONNX and int8 ONNX Runtime. Returns the records, median ms by (model, runtime) and the speed-up
    per runtime."""
    runtimes = ["torch", "onnx", "onnx-int8"]
    timed = bench(make(BenchConfig, models=[f"teacher={teacher}", f"student={student}"], runtimes=runtimes,
                       repeats=20, plot=str(plot) if plot else None, overwrite=True), progress=progress).records
    ms = {(r["model"], r["runtime"]): r["median_ms"] for r in timed}
    speedups = {rt: ms[("teacher", rt)] / ms[("student", rt)] for rt in runtimes
                if ms.get(("teacher", rt)) and ms.get(("student", rt))}
    return timed, ms, speedups


def _report(ctx: Context, continuing: bool) -> dict[str, Any]:
    """Teacher and student timed side by side, summary.json, report.md and report.html (plots embedded)."""
    from bort.report import plot_curve

    config, results, out = ctx.config, ctx.results, ctx.out
    tick = time.perf_counter()
    timed, ms, speedups = time_pair(results["teacher"]["folder"], results["student"]["folder"], out / "speed.png",
                                    config.progress)
    plot_curve(Path(results["pretrain"]["curve"]), out / "pretrain_curve.png")
    records = io.read_json(out / "stages.json")
    majority, metric = ft.majority_score(ctx.task, ctx.data), ctx.task.metrics[0]
    if results["student"]["dev"][metric] <= majority[metric]:
        log.warning(f"the student's dev {metric} {results['student']['dev'][metric]:.4f} is no better than a constant "
                    f"guess's {majority[metric]:.4f}: it has not learned the task (see report.md)")
    summary = {"task": config.task, "source": ctx.source, "target": _targets(config).describe(),
               "target_met": results["extract"]["target_met"], "teacher": results["teacher"],
               "target_check": results["extract"].get("side_by_side", []), "latency_runtime": config.latency_runtime,
               "architecture": results["extract"]["chosen"]["arch"],
               "w_optimum": results["extract"]["w_optimum"]["arch"], "pretrain": {
                   k: results["pretrain"].get(k) for k in ("steps", "eval", "corpus", "sequences")},
               "student": results["student"], "metric": metric, "majority_dev": majority, "onnx": results["onnx"],
               "latency_ms": {
                   f"{m}/{rt}": v for (m, rt), v in ms.items()}, "speedup": speedups,
               "params": {m: next(r["params"] for r in timed if r["model"] == m) for m in ("teacher", "student")},
               "stage_seconds": {**{k: v.get("seconds") for k, v in records.items()},
                                 "report": round(time.perf_counter() - tick, 1)},
               "budget_minutes": config.budget_minutes, "plan": ctx.plan, "final_model": results["student"]["folder"]}
    io.write_json(out / "summary.json", summary)
    images = {name: (out / name).read_bytes() for name in IMAGES}
    blocks = _blocks(summary)
    io.write_text(out / "report.md", _markdown(blocks))
    io.write_text(out / "report.html", _html(blocks, images))
    _model_card(Path(results["student"]["folder"]), summary, blocks, ctx.task)
    return summary


def _model_card(folder: Path, summary: dict[str, Any], blocks: list[tuple], task) -> None:
    """The deployed model's card: the report's figures (without its plots) and how to load it."""
    meta = {"library_name": "transformers", "tags": ["bort", "distillation", task.benchmark],
            "datasets": [task.benchmark], "metrics": list(task.metrics),
            "bort": {k: summary[k] for k in ("task", "source", "target", "target_met", "architecture", "speedup",
                                             "latency_ms", "params")} | {"dev": summary["student"]["dev"]}}
    text = _markdown([b for b in blocks if b[0] != "img"])
    io.write_model_card(folder, meta, f"{text}\n{ft.card_usage(task)}")


def _data(config: PipelineConfig) -> dict[str, Any]:
    return dict(data_dir=config.data_dir, max_train_samples=config.max_train_samples, max_seq_len=config.max_seq_len,
                **task_files(config))


def _blocks(s: dict[str, Any]) -> list[tuple]:
    """The report's content once, as (kind, ...) blocks that render to Markdown and to HTML alike."""
    teacher_dev, student_dev = s["student"].get("teacher_dev") or s["teacher"].get("dev") or {}, s["student"]["dev"]
    guess, metric = s["majority_dev"], s["metric"]
    planned = s["plan"]["minutes"]
    ms, speed, params = s["latency_ms"], s["speedup"], s["params"]
    arch = lambda a: "⟨" + ", ".join(map(str, a.values())) + "⟩"  # noqa: E731
    return [
        ("h1", f"bort run: {s['task']}"),
        ("p", f"Source `{s['source']}`, target {s['target']}: "
              + (f"chosen {arch(s['architecture'])} (the W-optimum was {arch(s['w_optimum'])})" if s["target_met"]
                 else f"NOT MET by any finalist of the search; the student is the W-optimum {arch(s['architecture'])}")
              + f". Deployable model: `{s['final_model']}` (seed {s['student']['best_seed']}, the best on the dev "
              f"split). " + (f"ONNX kept: `{s['onnx']['kept']}` ({s['onnx']['why']})." if s["onnx"]["kept"] else
                         f"No ONNX model: {s['onnx']['why']}.")),
        ("h2", "Official dev split"),
        ("table", ("metric", "teacher", "student", "constant guess"),
         [(k, f"{100 * teacher_dev.get(k, math.nan):.1f}", f"{100 * v:.1f}", f"{100 * guess[k]:.1f}")
          for k, v in student_dev.items()]),
        ("p", "Constant guess: always the most common train label (the mean train score for regression), the floor "
              "a model must clear to have learned the task."
              + ("" if student_dev[metric] > guess[metric] else
                 f" Warning: the student is no better than the constant guess on {metric}, so it has not learned "
                 "the task. A lower --speedup lets the search choose a larger student; a larger --budget-minutes "
                 "pre-trains it longer.")),
        ("h2", "Speed, side by side (batch 1 x 128)"),
        ("table", ("runtime", "teacher ms", "student ms", "student vs teacher"),
         [(rt, f"{ms['teacher/' + rt]:.2f}", f"{ms['student/' + rt]:.2f}", f"{v:.1f}x") for rt, v in speed.items()]),
        ("p", f"Parameters: teacher {params['teacher'] / 1e6:.1f}M, student {params['student'] / 1e6:.1f}M."),
        *((("h2", "The speed target, checked side by side with the source"),
           ("p", "The search's finalists that met the target by its own timings, most accurate first, each timed "
                 "in alternation with the source until one met it with 95% confidence (random weights, "
                 f"{RUNTIME_NAMES[s.get('latency_runtime', 'torch')]})."),
           ("table", ("finalist", "speed-up, median", "at least (95%)", "meets the target"),
            [(arch(dict(enumerate(r["arch"]))), f"{r['speedup']:.2f}x", f"{r['speedup_at_least']:.2f}x",
              "yes" if r["meets"] else "no") for r in s["target_check"]])) if s.get("target_check") else ()),
        ("p", f"Pre-trained for {s['pretrain']['steps']} steps of {PRETRAIN_BATCH[0]} x {PRETRAIN_BATCH[1]} tokens"
              + (f" on {s['pretrain']['sequences']:,} packed sequences of "
                 + ", ".join(f"`{Path(p).name}`" for p in s["pretrain"]["corpus"]) if s["pretrain"].get("corpus")
                 else "") + "."),
        *(("img", name) for name in IMAGES),
        ("h2", f"Time per stage (budget {s['budget_minutes']:g} min)"),
        ("table", ("stage", "planned minutes", "minutes"),
         [(k, f"{planned[k]:.1f}" if k in planned else "", f"{(v or 0) / 60:.1f}")
          for k, v in s["stage_seconds"].items()]),
    ]


def _markdown(blocks: list[tuple]) -> str:
    lines = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            lines += [("# " if kind == "h1" else "## ") + rest[0], ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "img":
            lines += [f"![{rest[0]}]({rest[0]})", ""]
        else:
            header, rows = rest
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(row) + " |" for row in rows), ""]
    return "\n".join(lines)


def _html(blocks: list[tuple], images: dict[str, bytes]) -> str:
    """One self-contained page (images embedded), so the report opens offline in any browser."""
    from html import escape

    parts = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{escape(rest[0])}</{kind}>")
        elif kind == "img":
            data = base64.b64encode(images[rest[0]]).decode()
            parts.append(f'<img alt="{rest[0]}" src="data:image/png;base64,{data}">')
        else:
            header, rows = rest
            parts.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>bort run</title><style>body{font-family:"
            "sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:.2em .6em}img{max-width:100%}</style></head><body>" + "\n".join(parts) + "</body></html>")


STAGE_RUNNERS = {"teacher": _teacher, "extract": _extract, "pretrain": _pretrain, "student": _student,
                 "onnx": _onnx, "report": _report}
