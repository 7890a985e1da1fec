"""Agora's rounds (`bort finetune --agora`), honest by construction.

Per seed: carve Agora's dev split from the official train split (stratified) and halve it (stratified); then
each round fine-tunes one student per remaining hyperparameter set of Θ (always from the pretrained student, on
the grown train set), takes the best on the selection half, generates points near its mistakes on the other half
(a transformation, then a similarity band), labels them with the labeller (hard labels) or the teacher (soft
labels, and task distillation throughout), appends them to train, and keeps the best (1 - prune) share of the
sets (at least one; once one is left, further rounds replay it on the grown data). The returned model is the
best of all rounds on the selection half, from which nothing was generated; it is scored only on the official
dev split, which Agora never sees. `compare` also fine-tunes the student without Agora, and `uniform_control` on
as many points generated from random train points, both on the same train part with the same seed, the winning
set's hyperparameters and the same number of optimizer steps.

Everything is persisted under <output>/agora/seed-<s>/round-<r>/ (round.json with every set's score and the
kept sets, generated.jsonl with each new point, its source point, similarity and label), so a run can be
inspected, and resumed after a crash at the step it reached.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bort import io
from bort.agora.transforms import (
    Similarity,
    grow,
    label_points,
    load_encoder,
    make_transform,
    neighbours,
    uniform_points,
)
from bort.config import AgoraConfig, FinetuneConfig, parse_theta
from bort.errors import BortError
from bort.tasks import finetune as ft
from bort.tasks.registry import Example, Task
from bort.tasks.teacher import TaskTeacher

log = logging.getLogger("bort")
THETA_KEYS = ("lr", "weight_decay", "warmup", "batch_size", "epochs")  # what Θ varies between Agora's sets


def agora_splits(task: Task, train: list[Example], fraction: float) -> tuple[list[Example], list[Example],
                                                                            list[Example]]:
    """(train part, Agora dev, held out): mistakes come from Agora dev, the returned round is chosen on held out."""
    train_part, agora_dev = carve_dev(task, train, fraction)
    try:
        agora_dev, held_out = carve_dev(task, agora_dev, 0.5, seed=1)
    except BortError:
        raise BortError(f"task {task.name}: Agora's dev split of {len(agora_dev)} examples is too small to halve (one "
                        "half finds mistakes, the other chooses the round); raise --agora-dev-fraction or "
                        "--max-train-samples") from None
    return train_part, agora_dev, held_out


def carve_dev(task: Task, examples: list[Example], fraction: float, seed: int = 0) -> tuple[list[Example],
                                                                                             list[Example]]:
    """Split the official train set into (train part, Agora dev), stratified by label (score quintile)."""
    if not 0 < fraction < 1:
        raise BortError(f"--agora-dev-fraction must be in (0, 1), not {fraction}")
    if task.kind == "regression":
        ordered = sorted(e.label for e in examples)
        cuts = [ordered[int(len(ordered) * q / 5)] for q in range(1, 5)]
        stratum = [sum(e.label >= c for c in cuts) for e in examples]
    else:
        stratum = [e.label for e in examples]
    groups: dict[Any, list[int]] = {}
    for i, s in enumerate(stratum):
        groups.setdefault(s, []).append(i)
    rng, dev = random.Random(seed), set()
    for members in groups.values():
        rng.shuffle(members)
        dev.update(members[:round(fraction * len(members)) if len(members) > 1 else 0])
    train = [e for i, e in enumerate(examples) if i not in dev]
    held = [e for i, e in enumerate(examples) if i in dev]
    if not held or not train:
        raise BortError(f"task {task.name}: {len(examples)} train examples are too few to carve an Agora dev "
                        f"split of {fraction:.0%}; raise --agora-dev-fraction or --max-train-samples")
    return train, held


def mistakes(task: Task, examples: list[Example], predictions: Any, tolerance: float) -> list[int]:
    """Indices the model got wrong: another class, or a score off by more than `tolerance`."""
    if task.kind == "regression":
        return [i for i, (e, p) in enumerate(zip(examples, predictions, strict=True)) if abs(p - e.label) > tolerance]
    return [i for i, (e, p) in enumerate(zip(examples, predictions, strict=True)) if task.label_index(e.label) != p]


class AgoraRun:
    """The rounds of one seed, persisted in `folder` (resumable at any point). Mistakes are found on `dev` and new
    points generated from them; sets, pruning and the returned round are chosen on `held_out`, a part of Agora's dev
    split that nothing was generated from, so that choice stays a held-out measurement."""

    def __init__(self, source: str, task: Task, train_part: list[Example], dev: list[Example],
                 held_out: list[Example], configs: list[FinetuneConfig], folder: Path, labeller: TaskTeacher,
                 transform, similarity: Similarity, tokenizer: Any, rounds: int, samples_per_mistake: int,
                 band: tuple[float, float], prune: float, max_mistakes: int | None, soft: np.ndarray | None = None,
                 hidden_teacher: torch.nn.Module | None = None):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        labels = [e.label for e in train_part]
        self.tolerance = 0.1 * (max(labels) - min(labels)) if task.kind == "regression" else 0.0

    def generated(self, upto: int) -> list[dict[str, Any]]:
        paths = (self.folder / f"round-{r}" / "generated.jsonl" for r in range(upto))
        return [row for path in paths if path.is_file() for row in io.read_jsonl(path)]

    def run(self) -> dict[str, Any]:
        """All rounds; returns the state with the best round and set."""
        state_path = self.folder / "state.json"
        state = io.read_json(state_path) if state_path.is_file() else {
            "alive": list(range(len(self.configs))), "rounds": []}
        for r in range(len(state["rounds"]), self.rounds):
            state["rounds"].append(self.round(r, state["alive"]))
            state["alive"] = state["rounds"][-1]["kept"]
            if io.is_main():
                io.write_json(state_path, state)
        best = max(state["rounds"], key=lambda s: s["best_score"])
        state["best"] = {"round": best["round"], "set": best["best_set"], "score": best["best_score"],
                         "steps": best["steps"], "folder": str(self.folder / f"round-{best['round']}" /
                                                               f"set-{best['best_set']}")}
        return state

    def round(self, r: int, alive: list[int]) -> dict[str, Any]:
        rdir = self.folder / f"round-{r}"
        extra = self.generated(r)
        grown, soft = grow(self.train_part, self.soft, extra)
        scores, steps, preds = {}, {}, {}
        for k in alive:
            kdir = rdir / f"set-{k}"
            # Agora's folders belong to the run, so an interrupted set always resumes from its checkpoint
            net, steps[k] = ft.train(self.source, self.task, grown, self.configs[k], kdir, True, self.tokenizer,
                                     soft=soft, teacher=self.hidden_teacher)
            score_path = kdir / "agora_dev.json"
            if score_path.is_file():
                saved = io.read_json(score_path)
            else:
                metrics, _ = ft.evaluate(net, self.tokenizer, self.task, self.held_out, self.configs[k])
                _, p = ft.evaluate(net, self.tokenizer, self.task, self.dev, self.configs[k])
                saved = {"metrics": metrics, "predictions": [float(x) for x in p]}
                if io.is_main():
                    io.write_json(score_path, saved)
            scores[k], preds[k] = saved["metrics"][self.task.metrics[0]], saved["predictions"]
        best = max(alive, key=lambda k: (scores[k], -k))
        wrong = mistakes(self.task, self.dev, preds[best], self.tolerance)
        gen_path = rdir / "generated.jsonl"
        if r < self.rounds - 1 and not gen_path.is_file():
            self.generate(r, wrong, gen_path)
        io.barrier()  # the other processes read what rank 0 wrote
        made = self.generated(r + 1)[len(extra):] if r < self.rounds - 1 else []
        kept = sorted(alive, key=lambda k: (-scores[k], k))[:max(1, math.ceil(len(alive) * (1 - self.prune)))]
        summary = {"round": r, "n_train": len(grown), "n_generated_before": len(extra),
                   "scores": {str(k): scores[k] for k in alive},
                   "theta": {str(k): asdict(self.configs[k]) for k in alive},
                   "best_set": best, "best_score": scores[best], "steps": steps[best], "mistakes": len(wrong),
                   "generated": len(made), "labeller_agrees_with_source": _agreement(made), "kept": kept,
                   "dropped": [k for k in alive if k not in kept]}
        if io.is_main():
            io.write_json(rdir / "round.json", summary)
            for k in alive:  # keep each round's best model; the others' scores are in round.json
                if k != best:
                    shutil.rmtree(rdir / f"set-{k}", ignore_errors=True)
        return summary

    def generate(self, r: int, wrong: list[int], path: Path) -> None:
        rng = random.Random(self.configs[0].seed * 1009 + r)
        chosen = wrong if self.max_mistakes is None or len(wrong) <= self.max_mistakes else sorted(
            rng.sample(wrong, self.max_mistakes))
        rows = []
        for i in chosen:
            for new, segment, sim in neighbours(self.dev[i], self.transform, self.similarity,
                                                self.samples_per_mistake, self.band, rng):
                rows.append({"round": r, "source_index": i, "source": self.dev[i].to_json(), "segment": segment,
                             "similarity": sim, "example": new.to_json()})
        label_points(self.labeller, rows, self.soft is not None)
        if io.is_main():
            io.rewrite_jsonl(path, rows)


def _agreement(rows: list[dict[str, Any]]) -> float | None:
    """Share of generated points the labeller gave their source point's label (how far the band reaches)."""
    return round(sum(r["example"]["label"] == r["source"]["label"] for r in rows) / len(rows), 4) if rows else None


def agora(config: AgoraConfig) -> dict[str, Any]:
    """Agora fine-tuning of `config.model` on `config.task` (one run per seed); with `compare`, plain too, and with
    `uniform_control` the same augmentation from random train points. Θ (`config.theta`) is a grid on top of the
    plain hyperparameters; `band` bounds the cosine similarity of a generated segment to its source; `prune` is the
    share of sets dropped per round. With a teacher (`--teacher`/`--teacher-from`) the teacher labels the generated
    points with its soft outputs and every model is trained by task distillation; with a labeller, the points get
    its hard labels (the paper's way). Returns what <output>/metrics.json holds: `agora` (and the controls) per seed
    and mean ± std on the official dev split, the labeller's official-dev scores beside the majority-class score,
    and each seed's rounds. The best seed's returned model is copied to <output>/."""
    if config.augment:
        raise BortError("--augment is for task distillation without --agora (Agora generates its own points, near its "
                        "mistakes); leave out --augment or --agora")
    given = [flag for flag, value in (("--labeller", config.labeller), ("--labeller-from", config.labeller_from),
                                      ("--teacher", config.teacher), ("--teacher-from", config.teacher_from)) if value]
    if len(given) != 1:
        raise BortError("Agora needs exactly one of --labeller DIR or --labeller-from MODEL (hard labels, the paper's "
                        "way), or --teacher DIR or --teacher-from MODEL (soft labels and task distillation)"
                        + (f"; got {' and '.join(given)}" if given else ""))
    distil = bool(config.teacher or config.teacher_from)
    role, labeller, labeller_from = ("teacher", config.teacher, config.teacher_from) if distil else (
        "labeller", config.labeller, config.labeller_from)
    source = str(config.model) if config.model else io.default_source()
    spec = ft.resolve_task(config.task, **config.task_files())
    grid = parse_theta(config.theta, config, THETA_KEYS)
    data = ft.load_data(spec, config.data_dir, config.max_train_samples)
    train_part, agora_dev, held_out = agora_splits(spec, data.train, config.agora_dev_fraction)
    checked = ft.check_teacher(labeller, labeller_from, spec, config.max_seq_len, role=role)
    if config.infill_model:
        io.check_weights(config.infill_model)
    tokenizer, encoder = ft.task_tokenizer(source, config.max_seq_len), load_encoder(source)
    if distil:
        ft.hidden_teacher(checked, tokenizer, config)  # a given teacher with another vocabulary fails before any work
    inputs = (config.model, config.data_dir, labeller, labeller_from, config.infill_model, config.train_file,
              config.dev_file, config.test_file)
    out = io.prepare_output(config.output, "finetune", config.resume, config.overwrite, inputs)
    settings, identity = out / "agora" / "settings.json", config.identity()
    if settings.is_file():  # Agora's own options (band, transform, labeller...) must match the run they continue
        io.same_settings(io.read_json(settings), identity, f"the Agora run in {out}")
    elif io.is_main():
        io.write_json(settings, identity)
    labeller_dir, labeller_dev = ft.fine_tuned_teacher(config, spec, data, out, labeller, labeller_from, role=role)
    judge = checked or TaskTeacher(labeller_dir, spec, config.max_seq_len, role=role)
    if labeller_dev is None and io.is_main():
        labeller_dev = ft.teacher_score(judge, data, config)
    majority = ft.majority_score(spec, data)
    if io.is_main() and labeller_dev.get(spec.metrics[0], math.inf) <= majority[spec.metrics[0]]:
        log.warning("the %s scores %s %.4f on the official dev split, no better than always predicting the majority "
                    "(%.4f): Agora assumes an ok-ish labeller, and its labels may hurt", role, spec.metrics[0],
                    labeller_dev[spec.metrics[0]], majority[spec.metrics[0]])
    soft = judge.outputs(train_part) if distil else None  # once, shared by every seed and round
    hidden = ft.hidden_teacher(judge, tokenizer, config) if distil else None
    changer = make_transform(config.transform, encoder, tokenizer, config.replace_fraction, config.infill_model)
    similarity = Similarity(encoder, tokenizer, config.max_seq_len)
    result: dict[str, Any] = {"task": spec.name, "benchmark": spec.benchmark, "metrics": list(spec.metrics),
                              "model": source, "labeller": labeller_dir, "labels": "soft" if distil else "hard",
                              "labeller_dev": labeller_dev, "majority_dev": majority, "n_train": len(train_part),
                              "n_agora_dev": len(agora_dev), "n_selection_dev": len(held_out),
                              "transform": config.transform, "band": list(config.band), "theta": grid, "rounds": {}}
    baseline = "distilled" if distil else "plain"
    runs: dict[str, dict[int, dict[str, float]]] = {"agora": {}, baseline: {}, "uniform": {}}
    finals, first = {}, None
    for seed in config.seeds:
        configs = [replace(config, seed=seed, **point) for point in grid]
        sdir = out / "agora" / f"seed-{seed}"
        state = AgoraRun(source, spec, train_part, agora_dev, held_out, configs, sdir, judge, changer, similarity,
                         tokenizer, config.rounds, config.samples_per_mistake, config.band, config.prune,
                         config.max_mistakes, soft, hidden).run()
        best, winner = state["best"], configs[state["best"]["set"]]
        finals[seed] = sdir / "final"
        if io.is_main() and not (finals[seed] / "metrics.json").is_file():
            io.copy_model(Path(best["folder"]), finals[seed])
        io.barrier()
        net = ft.load_task_model(finals[seed], spec) if io.is_main() else None
        n_generated = sum(s["generated"] for s in state["rounds"][:best["round"]])
        if io.is_main():
            runs["agora"][seed] = ft.finish_run(net, tokenizer, data, winner, finals[seed], source, best["steps"],
                                                "agora", note=f"Agora: round {best['round']}, set {best['set']}, "
                                                              f"{n_generated} generated points.")
        result["rounds"][str(seed)] = state
        first = first or net
        same = replace(winner, max_steps=best["steps"])  # the controls: same seed, set and optimizer steps
        if config.compare:
            pdir = out / baseline / f"seed-{seed}"
            pnet, steps = ft.train(source, spec, train_part, same, pdir, resume=True, tokenizer=tokenizer, soft=soft,
                                   teacher=hidden)
            if io.is_main():
                runs[baseline][seed] = ft.finish_run(pnet, tokenizer, data, same, pdir, source, steps, baseline,
                                                     note="Baseline of an Agora comparison: same seed, set and "
                                                          "optimizer steps as Agora's returned model.")
        if config.uniform_control:
            udir = out / "uniform" / f"seed-{seed}"
            points = udir / "generated.jsonl"
            if io.is_main() and not points.is_file():
                rows = uniform_points(train_part, n_generated, seed, changer, similarity, config.band,
                                      config.samples_per_mistake)
                label_points(judge, rows, distil)
                io.rewrite_jsonl(points, rows)
            io.barrier()  # every process reads what process 0 wrote
            rows = io.read_jsonl(points)
            grown, grown_soft = grow(train_part, soft, rows)
            unet, steps = ft.train(source, spec, grown, same, udir, resume=True, tokenizer=tokenizer, soft=grown_soft,
                                   teacher=hidden)
            if io.is_main():
                runs["uniform"][seed] = ft.finish_run(
                    unet, tokenizer, data, same, udir, source, steps, "uniform",
                    note=f"Uniform-augmentation control: {len(rows)} points from random train points (Agora made "
                         f"{n_generated}), same labeller, seed, set and optimizer steps.")
                result.setdefault("uniform_points", {})[str(seed)] = len(rows)
    if not io.is_main():
        return {}
    result.update({name: ft.summarise(done) for name, done in runs.items() if done})
    result["best_seed"] = ft.publish_best(out, finals, runs["agora"], spec.metrics[0])
    if config.measure_latency and first is not None:
        result.update(ft.latency_of(first, tokenizer, spec))
    io.write_json(out / "metrics.json", result)
    return result

