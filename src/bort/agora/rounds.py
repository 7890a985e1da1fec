"""Agora's rounds (`bort finetune --agora`), honest by construction.

Per seed: carve Agora's dev split from the official train split (stratified); then each round fine-tunes one
student per remaining hyperparameter set of Θ (always from the pretrained student, on the grown train set),
takes the best on Agora's dev split, generates points near its mistakes (a transformation, then a similarity
band), labels them with the labeller, appends them to train, and keeps the best (1 - prune) share of the sets
(at least one; once one is left, further rounds replay it on the grown data). The returned model is the best
of all rounds on Agora's dev split; it is scored only on the official dev split, which Agora never sees.
`compare` also fine-tunes the student plainly on the same train part with the same seed, the winning set's
hyperparameters and the same number of optimizer steps.

Everything is persisted under <output>/agora/seed-<s>/round-<r>/ (round.json with every set's score and the
kept sets, generated.jsonl with each new point, its source point, similarity and label), so a run can be
inspected, and resumed after a crash at the step it reached.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bort.agora.labelling import Labeller
from bort.agora.transforms import Similarity, load_encoder, make_transform
from bort.distill.teacher import load_tokenizer
from bort.errors import BortError
from bort.families.bert import default_source
from bort.tasks.finetune import (
    FinetuneConfig,
    TaskData,
    barrier,
    evaluate,
    finish_run,
    is_main,
    load_data,
    load_task_model,
    prepare_output,
    resolve_task,
    summarise,
    train,
)
from bort.tasks.registry import Example, Task

THETA_KEYS = {"lr": float, "weight_decay": float, "warmup": float, "batch_size": int, "epochs": float}


def parse_theta(theta: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Θ as a list of overrides: 'lr=2e-5,5e-5;batch_size=16,32' is the grid (cross product) of the values."""
    if theta is None or theta == "":
        return [{}]
    if isinstance(theta, list):
        grid = theta
    else:
        axes = []
        for part in filter(None, (p.strip() for p in theta.split(";"))):
            key, _, values = part.partition("=")
            key = key.strip().replace("-", "_")
            if key not in THETA_KEYS or not values:
                raise BortError(f"--theta: '{part}' is not KEY=V1,V2 with KEY one of {', '.join(THETA_KEYS)}")
            try:
                axes.append([(key, THETA_KEYS[key](v)) for v in values.split(",")])
            except ValueError:
                raise BortError(f"--theta: a value of {key} in '{part}' is not a number") from None
        grid = [dict(combo) for combo in itertools.product(*axes)]
    for point in grid:
        unknown = set(point) - set(THETA_KEYS)
        if unknown:
            raise BortError(f"--theta: unknown key(s) {', '.join(sorted(unknown))}; use {', '.join(THETA_KEYS)}")
    return grid or [{}]


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


def neighbours(example: Example, transform, similarity: Similarity, n: int, band: tuple[float, float],
               rng: random.Random, oversample: int = 4) -> list[tuple[Example, str, float]]:
    """Up to n new points near `example`: one segment transformed, similarity to that segment inside the band."""
    segments = ["text"] + (["pair"] if example.pair else [])
    segment = rng.choice(segments)
    original = getattr(example, segment)
    candidates = list(dict.fromkeys(c for c in transform(original, n * oversample, rng) if c and c != original))
    kept = []
    for text, sim in zip(candidates, similarity(original, candidates) if candidates else [], strict=True):
        if band[0] <= sim <= band[1]:
            kept.append((replace(example, **{segment: text}, label=None, idx=None), segment, round(sim, 4)))
        if len(kept) == n:
            break
    return kept


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class AgoraRun:
    """The rounds of one seed, persisted in `folder` (resumable at any point)."""

    def __init__(self, source: str, task: Task, train_part: list[Example], dev: list[Example],
                 configs: list[FinetuneConfig], folder: Path, labeller: Labeller, transform, similarity: Similarity,
                 tokenizer: Any, rounds: int, samples_per_mistake: int, band: tuple[float, float], prune: float,
                 max_mistakes: int | None, progress: bool):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        labels = [e.label for e in train_part]
        self.tolerance = 0.1 * (max(labels) - min(labels)) if task.kind == "regression" else 0.0

    def generated(self, upto: int) -> list[dict[str, Any]]:
        rows = []
        for r in range(upto):
            path = self.folder / f"round-{r}" / "generated.jsonl"
            if path.is_file():
                rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return rows

    def run(self) -> dict[str, Any]:
        """All rounds; returns the state with the best round and set."""
        state_path = self.folder / "state.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {
            "alive": list(range(len(self.configs))), "rounds": []}
        for r in range(len(state["rounds"]), self.rounds):
            state["rounds"].append(self.round(r, state["alive"]))
            state["alive"] = state["rounds"][-1]["kept"]
            if is_main():
                _write_json(state_path, state)
        best = max(state["rounds"], key=lambda s: s["best_score"])
        state["best"] = {"round": best["round"], "set": best["best_set"], "score": best["best_score"],
                         "steps": best["steps"], "folder": str(self.folder / f"round-{best['round']}" /
                                                               f"set-{best['best_set']}")}
        return state

    def round(self, r: int, alive: list[int]) -> dict[str, Any]:
        rdir = self.folder / f"round-{r}"
        extra = self.generated(r)
        train = self.train_part + [Example.from_json(g["example"]) for g in extra]
        scores, steps, preds = {}, {}, {}
        for k in alive:
            kdir = rdir / f"set-{k}"
            net, steps[k] = train_fn(self.source, self.task, train, self.configs[k], kdir, self.progress,
                                     self.tokenizer)
            score_path = kdir / "agora_dev.json"
            if score_path.is_file():
                saved = json.loads(score_path.read_text())
            else:
                metrics, p = evaluate(net, self.tokenizer, self.task, self.dev, self.configs[k])
                saved = {"metrics": metrics, "predictions": [float(x) for x in p]}
                if is_main():
                    _write_json(score_path, saved)
            scores[k], preds[k] = saved["metrics"][self.task.metrics[0]], saved["predictions"]
        best = max(alive, key=lambda k: (scores[k], -k))
        wrong = mistakes(self.task, self.dev, preds[best], self.tolerance)
        gen_path = rdir / "generated.jsonl"
        if r < self.rounds - 1 and not gen_path.is_file():
            self.generate(r, wrong, gen_path)
        barrier()  # the other processes read what rank 0 wrote
        made = self.generated(r + 1)[len(extra):] if r < self.rounds - 1 else []
        ranked = sorted(alive, key=lambda k: (-scores[k], k))
        kept = ranked[:max(1, math.ceil(len(alive) * (1 - self.prune)))]
        summary = {"round": r, "n_train": len(train), "n_generated_before": len(extra),
                   "scores": {str(k): scores[k] for k in alive}, "theta": {str(k): asdict(self.configs[k])
                                                                           for k in alive},
                   "best_set": best, "best_score": scores[best], "steps": steps[best], "mistakes": len(wrong),
                   "generated": len(made), "labeller_agrees_with_source": _agreement(made), "kept": kept,
                   "dropped": [k for k in alive if k not in kept]}
        if is_main():
            _write_json(rdir / "round.json", summary)
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
        labels = self.labeller.label([Example.from_json(row["example"]) for row in rows])
        for row, label in zip(rows, labels, strict=True):
            row["example"]["label"] = label
        if is_main():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
            os.replace(tmp, path)


def train_fn(source: str, task: Task, examples: list[Example], config: FinetuneConfig, folder: Path,
             progress: bool, tokenizer: Any):
    """Agora's folders belong to the run, so an interrupted set always resumes from its checkpoint."""
    return train(source, task, examples, config, folder, resume=True, progress=progress, tokenizer=tokenizer)


def _agreement(rows: list[dict[str, Any]]) -> float | None:
    """Share of generated points the labeller gave their source point's label (how far the band reaches)."""
    if not rows:
        return None
    return round(sum(r["example"]["label"] == r["source"]["label"] for r in rows) / len(rows), 4)


def _labeller(labeller: str | None, labeller_from: str | None, task: Task, data: TaskData, base: FinetuneConfig,
              out: Path, progress: bool) -> tuple[str, dict[str, float] | None]:
    """The labeller folder: given, or fine-tuned first on the whole official train split (seed 0)."""
    if bool(labeller) == bool(labeller_from):
        raise BortError("Agora needs exactly one of --labeller DIR (fine-tuned on the task) or "
                        "--labeller-from MODEL (fine-tuned here first)")
    if labeller:
        return str(labeller), None
    folder = out / "labeller"
    cfg = replace(base, seed=0)
    tokenizer = load_tokenizer(labeller_from)
    net, steps = train(str(labeller_from), task, data.train, cfg, folder, resume=True, progress=progress,
                       tokenizer=tokenizer)
    metrics = finish_run(net, tokenizer, data, cfg, folder, labeller_from, steps, "labeller") if is_main() else None
    return str(folder), metrics


def agora(model: str | os.PathLike | None, task: str | Task, output: str | os.PathLike,
          data_dir: str | os.PathLike | None = None, labeller: str | None = None, labeller_from: str | None = None,
          seeds: list[int] | tuple[int, ...] = (0,), theta: str | list[dict[str, Any]] | None = None,
          rounds: int = 3, samples_per_mistake: int = 4, band: tuple[float, float] = (0.80, 0.98),
          transform: str = "neighbour", replace_fraction: float = 0.15, infill_model: str | None = None,
          agora_dev_fraction: float = 0.1, prune: float = 0.5, max_mistakes: int | None = None,
          compare: bool = False, epochs: float = 3.0, lr: float = 5e-5, batch_size: int = 32,
          weight_decay: float = 0.01, warmup: float = 0.1, max_seq_len: int = 128,
          max_train_samples: int | None = None, resume: bool = False, overwrite: bool = False,
          save_every: int = 100, measure_latency: bool = True, progress: bool = True,
          **custom: Any) -> dict[str, Any]:
    """Agora fine-tuning of `model` on `task` (one run per seed); with `compare`, plain fine-tuning too.

    Θ is `theta` (see `parse_theta`) on top of the plain hyperparameters; `band` bounds the cosine similarity
    of a generated segment to its source; `prune` is the share of sets dropped per round. Returns what
    <output>/metrics.json holds: `agora` (and `plain`) per seed and mean ± std on the official dev split, the
    labeller's official-dev scores, and each seed's rounds.
    """
    if rounds < 1 or samples_per_mistake < 1 or not 0 <= prune < 1 or not 0 <= band[0] <= band[1] <= 1:
        raise BortError("need --rounds >= 1, --samples-per-mistake >= 1, 0 <= --prune < 1 and a band "
                        "0 <= LOW <= HIGH <= 1")
    source = str(model) if model else default_source()
    spec = resolve_task(task, **custom)
    base = FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, warmup=warmup,
                          max_seq_len=max_seq_len, save_every=save_every)
    base.check()
    grid = parse_theta(theta)
    data = load_data(spec, data_dir, max_train_samples)
    train_part, agora_dev = carve_dev(spec, data.train, agora_dev_fraction)
    out = prepare_output(output, resume, overwrite)
    labeller_dir, labeller_metrics = _labeller(labeller, labeller_from, spec, data, base, out, progress)
    judge = Labeller(labeller_dir, spec, max_seq_len)
    tokenizer, encoder = load_tokenizer(source), load_encoder(source)
    changer = make_transform(transform, encoder, tokenizer, replace_fraction, infill_model)
    similarity = Similarity(encoder, tokenizer, max_seq_len)
    result: dict[str, Any] = {"task": spec.name, "benchmark": spec.benchmark, "metrics": list(spec.metrics),
                              "model": source, "labeller": labeller_dir, "labeller_dev": labeller_metrics,
                              "n_train": len(train_part), "n_agora_dev": len(agora_dev), "transform": transform,
                              "band": list(band), "theta": grid, "rounds": {}}
    agora_runs, plain_runs, first = {}, {}, None
    for seed in seeds:
        configs = [replace(base, seed=seed, **point) for point in grid]
        sdir = out / "agora" / f"seed-{seed}"
        state = AgoraRun(source, spec, train_part, agora_dev, configs, sdir, judge, changer, similarity, tokenizer,
                         rounds, samples_per_mistake, band, prune, max_mistakes, progress).run()
        best, winner = state["best"], configs[state["best"]["set"]]
        final = sdir / "final"
        if is_main() and not (final / "metrics.json").is_file():
            shutil.copytree(best["folder"], final, dirs_exist_ok=True)
        barrier()
        net = load_task_model(final, spec) if is_main() else None
        n_generated = sum(s["generated"] for s in state["rounds"][:best["round"]])
        if is_main():
            agora_runs[seed] = finish_run(net, tokenizer, data, winner, final, source, best["steps"], "agora",
                                          note=f"Agora: round {best['round']}, set {best['set']}, "
                                               f"{n_generated} generated points.")
        result["rounds"][str(seed)] = state
        first = first or net
        if compare:
            cfg = replace(winner, max_steps=best["steps"])
            pdir = out / "plain" / f"seed-{seed}"
            pnet, steps = train(source, spec, train_part, cfg, pdir, resume=True, progress=progress,
                                tokenizer=tokenizer)
            if is_main():
                plain_runs[seed] = finish_run(pnet, tokenizer, data, cfg, pdir, source, steps, "plain",
                                              note="Plain baseline of an Agora comparison: same seed, set and "
                                                   "optimizer steps as Agora's returned model.")
    if not is_main():
        return {}
    result["agora"] = summarise(agora_runs)
    if compare:
        result["plain"] = summarise(plain_runs)
    if measure_latency and first is not None:
        from bort.tasks.finetune import cpu_latency_ms

        result["cpu_latency_ms"] = cpu_latency_ms(first, tokenizer, spec)
    _write_json(out / "metrics.json", result)
    return result
