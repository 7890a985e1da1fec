"""`bort extract`: from a source, a teacher and a corpus to a results folder with the chosen architecture.

The glue around the FPTAS: resolve the inputs (one-line errors), state the budget, run the search (its arms
shared across processes under torchrun / accelerate launch), write the outputs.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers

import bort
from bort import io
from bort.config import ExtractConfig, parse_theta
from bort.errors import BortError
from bort.families import Family, Space, resolve_family
from bort.report import plot_pareto, write_candidates_csv
from bort.search.fptas import FPTAS, Candidate, Constraints, SearchResult
from bort.search.store import ResultsStore
from bort.search.surrogate import THETA_KEYS, Surrogate, default_surrogate
from bort.speed.latency import LatencyCache, hardware_id, median_bound, side_by_side, time_call

log = logging.getLogger("bort")

# The Bort article's grid over BERT-large (de Wynter & Perry 2020).
BUILTIN_SPACES = {"bort-paper": {"D": [2, 4, 6, 8, 10, 12], "A": [4, 8, 12, 16], "H": [512, 768, 1024],
                                  "I": [256, 512, 768, 1024, 3072]}}


@dataclass
class ExtractionResult:
    """What `bort extract` found; `summary` is exactly what result.json holds."""

    search: SearchResult
    family: Family
    output: Path
    summary: dict[str, Any]

    @property
    def chosen(self) -> Candidate:
        """What `chosen/` and result.json's "chosen" hold: the target's choice, else the W-optimum."""
        return self.search.constrained or self.search.chosen

    @property
    def w_optimum(self) -> Candidate:
        """The paper's choice, the highest W, reported beside a target's."""
        return self.search.chosen

    @property
    def constrained(self) -> Candidate | None:
        """The target's choice; None without a target or when no finalist met it."""
        return self.search.constrained


def load_space(family: Family, space: str | dict | os.PathLike | None) -> Space:
    """A built-in name ('default', 'bort-paper'), a mapping, or a JSON/YAML file of parameter -> values."""
    if space is None or space == "default":
        values = family.default_space()
    elif isinstance(space, dict):
        values = space
    elif str(space) in BUILTIN_SPACES:
        values = BUILTIN_SPACES[str(space)]
    else:
        path = Path(space)
        if not path.is_file():
            known = ", ".join(["default", *BUILTIN_SPACES])
            raise BortError(f"--space '{space}' is neither a built-in space ({known}) nor an existing JSON/YAML file")
        values = io.read_yaml(path, "--space")
        if not isinstance(values, dict):
            raise BortError(f"--space file {path} must map each parameter name to a list of values")
    result = Space.of(family, values)
    for name, top in zip(family.param_names, family.maximum(), strict=True):
        if above := [v for v in result.values[name] if v > top]:
            raise BortError(f"space value {name}={above[0]} is above the source's {name}={top}; a sub-architecture "
                            "cannot be larger than its source")
    return result


def extract(config: ExtractConfig, family: Family | None = None, surrogate: Surrogate | None = None
            ) -> ExtractionResult:
    """Find the W-optimal sub-architecture of `config.source` and write the results to `config.output`.

    `surrogate` may be any callable (arch, theta, steps, seed) -> ê > 0; by default the family's registered surrogate
    is used (`bert`: each candidate distilled from the teacher as `bort pretrain` would; `mlp`: a regression of its
    maximum point)."""
    fam = family or resolve_family(config.family, config.source)
    space = load_space(fam, config.space)
    if config.resume and not config.output:
        raise BortError("--resume needs --output: the folder of the run to continue")
    (rank, world), started = io.process(), time.perf_counter()
    if surrogate is None:
        surrogate = default_surrogate(fam, config)  # loads the teacher and the corpus: bad input fails here
    teacher_name = getattr(surrogate, "teacher_name", None)
    if config.resume:
        refuse_changed_options(config)
    search = build_search(fam, config, surrogate, space)
    thetas, constraints = search.thetas, search.constraints
    inputs = (config.source, config.teacher, config.space, *config.corpus)
    out = io.prepare_output(config.output, "extract", config.resume, config.overwrite, inputs)
    # without --speedup the settings read as before it existed, so earlier runs still resume
    targets = {k: v for k, v in constraints.__dict__.items()
               if k != "reference_speed" and (v is not None or k != "min_speedup")}
    settings = {**config.identity(), "source": fam.fingerprint(), "teacher": teacher_name, "space": space.values,
                "thetas": thetas, "steps": search.steps, "constraints": targets}
    store = ResultsStore(out, rank)
    if rank == 0:
        store.open(settings, resume=config.resume)
    io.barrier()

    predicted = predict_seconds(fam, search, config)
    log.info(f"space: |Ξ| = {space.size} points, {len(space.points(fam))} valid"
             + "".join(f", {n} dropped ({r})" for r, n in space.invalid.items())
             + f"; |Ξ'| = {len(search.pool)} dominated by T = {','.join(map(str, fam.maximum()))}"
             + (f" ({search.dominated_out} not)" if search.dominated_out else ""))
    budget = f"n = {search.steps} steps (--steps)" if config.steps else f"n(ε={config.epsilon}) = {search.steps} steps"
    log.info(f"budget: |Θ| = {len(thetas)}, {budget}, "
             f"|B| = {config.batch_size}x{config.max_seq_len}; rungs (steps x arms, at most): "
             f"{' -> '.join(f'{s}x{a}' for s, a in search.rungs)}; {search.planned_steps} training steps at most, "
             f"predicted ~{predicted / 60:.1f} min" + (f" over {world} processes" if world > 1 else ""))
    with io.progress_bar(None, "extract", config.progress and rank == 0, unit="step") as bar:
        result = search.run(store, bar, rank, world, io.gather)
        seconds, check = time.perf_counter() - started, None
        if config.check_factor and rank == 0:
            log.info(f"approximation check: {len(result.finalists) * len(thetas)} finalist arms x "
                     f"{config.check_factor * search.steps} steps")
            bar.reset(total=len(result.finalists) * len(thetas) * config.check_factor * search.steps)
            t0 = time.perf_counter()
            check = search.recheck(store, result, config.check_factor, bar)
            check["seconds"] = round(time.perf_counter() - t0, 1)
    result.space_size, result.invalid = space.size, dict(space.invalid)
    confirmed = None
    if config.speed == "measured" and (constraints.min_speedup or constraints.max_latency_ms is not None):
        confirmed = io.broadcast(confirm_side_by_side(fam, result, constraints, config, out) if rank == 0 else None)
        met = [r["arch"] for r in confirmed if r["meets"]]
        result.constrained = next((c for c in result.feasible if list(c.arch) in met), None)
    summary = summarize(fam, result, settings, predicted, seconds, world)
    if confirmed is not None:
        summary["side_by_side"] = confirmed
    if check is not None:
        summary["approximation_check"] = check
        verdict = ("undecided: every finalist diverged" if check["ratio"] is None else f"ratio {check['ratio']:.3f}, "
                   f"{'within' if check['within_1_minus_epsilon'] else 'NOT within'} 1 - ε = {1 - config.epsilon:.2f}")
        log.info(f"approximation check: W(ε choice) at {check['factor']}x budget = "
                 f"{check['W_of_epsilon_choice_at_larger_budget']:.4f} vs best {check['W_at_larger_budget']:.4f} "
                 f"({','.join(map(str, check['chosen_at_larger_budget']))}): {verdict}")
    if rank == 0:
        write_outputs(out, fam, result, summary, teacher_name)
        log.info(f"done in {seconds / 60:.1f} min ({result.trained_steps} steps trained now, predicted "
                 f"{predicted / 60:.1f} min); results in {out}")
    return ExtractionResult(result, fam, out, summary)


# what run.json records as the run resolved it, in place of the option of the same name
DERIVED = ("source", "teacher", "space", "thetas", "steps", "constraints")


def refuse_changed_options(config: ExtractConfig) -> None:
    """A resumed search whose options changed is refused before its candidates are timed (minutes in ONNX Runtime).
    What the run derives from them (the source's fingerprint, the teacher, Θ) is compared later, by `store.open`."""
    run_file = Path(config.output) / "run.json"
    if run_file.is_file():
        identity = {k: v for k, v in config.identity().items() if k not in DERIVED}
        saved = io.read_json(run_file)
        io.same_settings({k: saved.get(k) for k in identity}, identity, f"the search in {run_file.parent}")


def confirm_side_by_side(fam: Family, result: SearchResult, constraints: Constraints, config: ExtractConfig,
                         out: Path) -> list[dict[str, Any]]:
    """The finalists meeting a measured target, most accurate first, each timed side by side with the source until
    one meets it with 95% confidence: that one is the target's choice. The search's latencies are separate timings,
    cached from whenever each was taken, and their ratios drift from what a user measures (on SST-2 the search's
    5.2x choice was 3.8x side by side); a choice that meets the target only on its median is a coin flip for the
    user who times it again. Each timing is kept in the run's side_by_side.jsonl, so a resumed run keeps its choice."""
    path = out / "side_by_side.jsonl"
    timed = {tuple(r["arch"]): r for r in io.read_jsonl(path)}
    records = []
    for c in result.feasible:
        if c.arch not in timed:
            timed[c.arch] = _against_source(fam, result.maximum, c, constraints, config)
            io.append_jsonl(path, timed[c.arch])
        records.append(timed[c.arch])
        if records[-1]["meets"]:
            break
    return records


def _against_source(fam: Family, source: Candidate, c: Candidate, constraints: Constraints, config: ExtractConfig
                    ) -> dict[str, Any]:
    """One finalist timed side by side with the source: medians, 95% bounds, and whether it meets the targets."""
    source_ms, ms = side_by_side(fam, [source.arch, c.arch], config.latency_batch_size, config.latency_seq_len,
                                 runtime=config.latency_runtime)
    ratios = [s / m for s, m in zip(source_ms, ms, strict=True)]
    slowest, least = median_bound(ms, 0.95), median_bound(ratios, 0.05)
    meets = replace(constraints, reference_speed=least * slowest).allows(replace(c, latency_ms=slowest), True)
    log.info(f"side by side with the source: {','.join(map(str, c.arch))} {statistics.median(ms):.2f} ms "
             f"(at most {slowest:.2f}), {statistics.median(ratios):.2f}x (at least {least:.2f}x) with 95% "
             f"confidence: {'meets' if meets else 'misses'} {constraints.describe()}")
    return {"arch": list(c.arch), "latency_ms": round(statistics.median(ms), 3),
            "source_latency_ms": round(statistics.median(source_ms), 3), "speedup": round(statistics.median(ratios), 3),
            "speedup_at_least": round(least, 3), "latency_ms_at_most": round(slowest, 3), "meets": meets}


def predict_seconds(fam: Family, search: FPTAS, config: ExtractConfig) -> float:
    """The planned schedule's time (see `calibrate`)."""
    return calibrate(fam, search, config)(search)


def calibrate(fam: Family, search: FPTAS, config: ExtractConfig) -> Callable[[FPTAS], float]:
    """A schedule's predicted seconds, calibrated by timing the surrogate on the median-cost candidate of `search`.

    One untimed warm-up run, then runs of 1 and 5 steps give a per-step and a per-arm (build and held-out evaluation)
    time, which are scaled to every rung by the operation count (5, not 3: the difference of two timings is noisy,
    and a wider gap halves that noise for one second more). Later rungs are assumed to keep the cheapest
    candidates (W favours them); the run reports its real time beside this."""
    ops = sorted((fam.cost(c.arch, config.batch_size, config.max_seq_len).ops, c.arch) for c in search.pool)
    (probe_ops, probe), theta = ops[len(ops) // 2], search.thetas[0]
    # seconds; the untimed warm-up run caches the teacher's outputs for the first batches
    one = time_call(lambda: search.surrogate(probe, theta, 1, 0), repeats=1, warmup=1)[0] / 1000
    five = time_call(lambda: search.surrogate(probe, theta, 5, 0), repeats=1, warmup=0)[0] / 1000
    per_step = max(five - one, 0.0) / 4
    per_arm = max(one - per_step, 0.0)

    def seconds(schedule: FPTAS) -> float:
        total = 0.0
        for steps, arms in schedule.rungs:
            cheapest = [o for o, _ in ops[:max(1, arms // len(schedule.thetas))]]
            total += arms * (sum(cheapest) / len(cheapest) / probe_ops) * (steps * per_step + per_arm)
        return total

    return seconds


def candidate_summary(c: Candidate, names, maximum: Candidate | None = None) -> dict[str, Any]:
    out = {"arch": dict(zip(names, c.arch, strict=True)), "params": c.params, "effective_params": c.effective_params,
           "ops": c.ops, "latency_ms": c.latency_ms, "surrogate_error": c.error, "W": c.W, "steps": c.steps,
           "theta": c.theta}
    if maximum is not None:
        out["ratios_to_source"] = {
            "params": c.params / maximum.params, "effective_params": c.effective_params / maximum.effective_params,
            "ops": c.ops / maximum.ops, "latency": None if c.latency_ms is None else c.latency_ms / maximum.latency_ms}
    return out


def build_search(fam: Family, config: ExtractConfig, surrogate: Callable[..., float], space: Space | None = None,
                 steps: int | None = None) -> FPTAS:
    """The search `config` describes (with `steps` per finalist when given): its space, Θ, targets and, when
    speed is measured or a latency is targeted, every candidate timed by process 0 (processes timing at once would
    slow each other down and disagree; the cache keeps quiet measurements)."""
    space = space or load_space(fam, config.space)
    if not (points := space.points(fam)):
        reasons = "; ".join(f"{n} x {r}" for r, n in space.invalid.items())
        raise BortError(f"the space has no valid architecture ({reasons}); fix --space")
    thetas = [{k: point.get(k, getattr(config, k)) for k in THETA_KEYS}
              for point in parse_theta(config.theta, config, THETA_KEYS)]
    latency = None
    if config.speed == "measured" or config.max_latency_ms is not None:
        cache, shape = LatencyCache(), (config.latency_batch_size, config.latency_seq_len)
        latency = io.broadcast({a: cache.measure(fam, a, *shape, runtime=config.latency_runtime)
                                for a in [*points, fam.maximum()]}
                               if io.is_main() else None).__getitem__
    as_int = lambda v: None if v is None else int(v)  # noqa: E731
    constraints = Constraints(as_int(config.max_params), as_int(config.max_effective_params), config.max_latency_ms,
                              config.speedup)
    return FPTAS(fam, points, surrogate, thetas, config.epsilon, steps or config.steps, config.speed == "measured",
                 latency, config.latency_batch_size, config.latency_seq_len, constraints, config.halving,
                 seed=config.seed)


def fit_steps(fam: Family, config: ExtractConfig, seconds: float, least: int = 4) -> tuple[int, float]:
    """The most steps per finalist, up to n(ε) and at least `least`, whose whole search is predicted to take at most
    `seconds` (building the surrogate and timing it count too), and that prediction. How `bort run` fits its
    search into its share of the budget, by the same calibration `bort extract` prints."""
    started = time.perf_counter()
    search = build_search(fam, config, default_surrogate(fam, config))
    predict = calibrate(fam, search, config)
    overhead = time.perf_counter() - started  # the search pays it again: its own surrogate and calibration
    steps = search.steps
    while steps > least and overhead + predict(search) > seconds:
        steps -= 1
        search = search.with_steps(steps)
    return steps, overhead + predict(search)


def summarize(fam: Family, result: SearchResult, settings: dict[str, Any], predicted: float, seconds: float,
              world: int) -> dict[str, Any]:
    names = fam.param_names
    target = Constraints(**settings["constraints"]).describe() or None
    return {"chosen": candidate_summary(result.constrained or result.chosen, names, result.maximum),
            "w_optimum": candidate_summary(result.chosen, names, result.maximum), "target": target,
            "target_met": result.constrained is not None, "source": candidate_summary(result.maximum, names),
            "epsilon": settings["epsilon"], "n": result.steps, "thetas": settings["thetas"],
            "rungs": [{"steps": s, "arms": a} for s, a in result.rungs], "space_size": result.space_size,
            "invalid": result.invalid, "candidates": len(result.candidates), "dominated_out": result.dominated_out,
            "planned_steps": result.planned_steps, "trained_steps": result.trained_steps,
            "predicted_seconds": round(predicted, 1), "seconds": round(seconds, 1), "processes": world,
            "settings": settings,
            "versions": {"bort": bort.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version()},
            "hardware": {"id": hardware_id(), "threads": torch.get_num_threads()}}


def write_outputs(out: Path, fam: Family, result: SearchResult, summary: dict[str, Any],
                  teacher_name: str | None) -> None:
    """candidates.csv, result.json, pareto.png and chosen/ (the family's saved architecture, teacher's tokenizer)."""
    write_candidates_csv(out / "candidates.csv", result.candidates, fam.param_names)
    io.write_json(out / "result.json", summary)
    plot_pareto(out / "pareto.png", result.candidates, result.chosen, result.constrained,
                summary["settings"]["speed"] == "measured")
    chosen = out / "chosen"
    fam.save((result.constrained or result.chosen).arch, chosen)
    if teacher_name is not None:
        io.save_model(chosen, io.load_tokenizer(teacher_name))
