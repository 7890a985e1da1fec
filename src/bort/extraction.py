"""`bort extract`: from a source, a teacher and a corpus to a results folder with the chosen architecture.

This is the glue around the FPTAS: resolve inputs (with one-line errors), state the budget, run the
search (sharded across processes when launched by torchrun / accelerate launch), write the outputs.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from bort.errors import BortError
from bort.families import Family, Space, resolve_family
from bort.search.fptas import FPTAS, Candidate, Constraints, SearchResult
from bort.search.store import ResultsStore

# The Bort article's grid over BERT-large (de Wynter & Perry 2020).
BUILTIN_SPACES = {
    "bort-paper": {"D": [2, 4, 6, 8, 10, 12], "A": [4, 8, 12, 16], "H": [512, 768, 1024],
                   "I": [256, 512, 768, 1024, 3072]},
}
DEFAULT_THETAS = [{"lr": 1e-3}, {"lr": 3e-3}]
EVAL_SEQUENCES = 32


@dataclass
class ExtractionResult:
    """What `bort extract` found; `summary` is exactly what result.json holds."""

    search: SearchResult
    family: Family
    output: Path
    summary: dict[str, Any]

    @property
    def chosen(self) -> Candidate:
        return self.search.chosen

    @property
    def constrained(self) -> Candidate | None:
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
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise BortError(f"--space file {path} is not valid JSON/YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise BortError(f"--space file {path} must map each parameter name to a list of values")
    result = Space.of(family, values)
    for name, top in zip(family.param_names, family.maximum(), strict=True):
        above = [v for v in result.values[name] if v > top]
        if above:
            raise BortError(f"space value {name}={above[0]} is above the source's {name}={top}; a sub-architecture "
                            "cannot be larger than its source")
    return result


def load_thetas(thetas: str | list | os.PathLike | None) -> list[dict[str, float]]:
    """Θ: None (the default), a list of dicts, a JSON/YAML file, or 'lr=1e-3;lr=3e-3,warmup=0.2'."""
    if thetas is None:
        return [dict(t) for t in DEFAULT_THETAS]
    if isinstance(thetas, list):
        return [dict(t) for t in thetas]
    text = str(thetas)
    if Path(text).is_file():
        loaded = yaml.safe_load(Path(text).read_text())
        if not isinstance(loaded, list) or not all(isinstance(t, dict) for t in loaded):
            raise BortError(f"--theta file {text} must hold a list of mappings like [{{lr: 0.001}}]")
        return loaded
    try:
        return [{k.strip(): float(v) for k, v in (kv.split("=") for kv in part.split(","))}
                for part in text.split(";") if part.strip()]
    except ValueError:
        raise BortError(f"--theta '{text}' is not 'key=value,...;key=value,...' (e.g. 'lr=1e-3;lr=3e-3')") from None


def prepare_output(output: str | os.PathLike | None) -> Path:
    folder = Path(output) if output else Path("runs") / datetime.now().strftime("extract-%Y%m%d-%H%M%S")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BortError(f"cannot write to output folder {folder}: {exc.strerror}; choose another --output") from None
    return folder


def distributed_context():
    """(rank, world size, gather, barrier, share) from accelerate when launched with several processes.

    `share(obj)` returns process 0's `obj` on every process (e.g. the output folder it created).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None, lambda: None, lambda obj: obj
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object

    state = PartialState(cpu=not torch.cuda.is_available())
    return (state.process_index, state.num_processes, gather_object, state.wait_for_everyone,
            lambda obj: broadcast_object_list([obj])[0])


def source_fingerprint(family: Family) -> Any:
    config = getattr(family, "source_config", None)
    if config is None:
        return {"family": family.name, "maximum": list(family.maximum())}
    keep = ("model_type", "vocab_size", "max_position_embeddings", "type_vocab_size", "num_hidden_layers",
            "num_attention_heads", "hidden_size", "intermediate_size", "hidden_act")
    return {k: getattr(config, k, None) for k in keep}


def extract(source: str | os.PathLike | None = None, teacher: str | os.PathLike | None = None,
            corpus: list[str | os.PathLike] | None = None, space: str | dict | os.PathLike | None = "default",
            family: str | Family = "bert", epsilon: float = 0.2, steps: int | None = None,
            thetas: str | list | None = None, batch_size: int = 8, seq_len: int = 64, speed: str = "ops",
            latency_batch_size: int = 1, latency_seq_len: int = 128, max_params: int | None = None,
            max_effective_params: int | None = None, max_latency_ms: float | None = None,
            output: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False, seed: int = 0,
            halving: bool = True, hidden_loss: str = "cosine", init: str = "random", check_factor: int | None = None,
            surrogate=None, progress: bool = True, verbose: bool = True) -> ExtractionResult:
    """Find the W-optimal sub-architecture of `source` (default: the embedded MiniLM) and write the results.

    `surrogate` may be any callable (arch, theta, steps, seed) -> ê > 0; by default the `bert` family
    distils each candidate from `teacher` (default: the source) on `corpus` (default: Python's bundled
    documentation), and the `mlp` family regresses its maximum point. `check_factor=4` adds the
    approximation check: the finalists retrained with 4x the budget, and whether the choice holds.
    `init="source"` starts every candidate as a slice of the source's weights instead of at random.
    """
    say = print if verbose else (lambda *a, **k: None)
    if init not in ("random", "source"):
        raise BortError(f"--init must be 'random' or 'source', got '{init}'")
    if speed not in ("ops", "measured"):
        raise BortError(f"--speed must be 'ops' or 'measured', got '{speed}'")
    if batch_size < 1 or seq_len < 8:
        raise BortError("--batch-size must be >= 1 and --seq-len >= 8")
    fam = resolve_family(family, source)
    search_space = load_space(fam, space)
    points = search_space.points(fam)
    if not points:
        reasons = "; ".join(f"{n} x {r}" for r, n in search_space.invalid.items())
        raise BortError(f"the space has no valid architecture ({reasons}); fix --space")
    theta_list = load_thetas(thetas)
    rank, world, gather, barrier, share = distributed_context()
    out = Path(share(str(prepare_output(output)) if rank == 0 else None))
    started = time.perf_counter()

    teacher_name = None
    if surrogate is None:
        surrogate, teacher_name = build_surrogate(fam, source, teacher, corpus, theta_list, epsilon, steps,
                                                  batch_size, seq_len, hidden_loss, seed, init)
    latency = None
    if speed == "measured" or max_latency_ms is not None:
        from bort.speed.latency import LatencyCache

        cache = LatencyCache()

        def latency(arch):
            return cache.measure(fam, arch, latency_batch_size, latency_seq_len)

    constraints = Constraints(max_params, max_effective_params, max_latency_ms)
    search = FPTAS(fam, points, surrogate, theta_list, epsilon, steps, speed == "measured", latency,
                   latency_batch_size, latency_seq_len, constraints, halving, seed=seed)
    settings = {"family": fam.name, "source": source_fingerprint(fam), "teacher": teacher_name,
                "corpus": [str(c) for c in corpus or []], "space": search_space.values, "thetas": theta_list,
                "epsilon": epsilon, "steps": search.steps, "batch_size": batch_size, "seq_len": seq_len,
                "speed": speed, "latency_shape": [latency_batch_size, latency_seq_len], "seed": seed,
                "halving": halving, "hidden_loss": hidden_loss, "init": init, "constraints": constraints.__dict__}
    store = ResultsStore(out, rank)
    if rank == 0:
        store.open(json.loads(json.dumps(settings)), resume=resume, overwrite=overwrite)
    barrier()

    predicted = predict_seconds(fam, search, batch_size, seq_len)
    say(f"space: |Ξ| = {search_space.size} points, {len(points)} valid"
        + "".join(f", {n} dropped ({r})" for r, n in search_space.invalid.items())
        + f"; |Ξ'| = {len(search.pool)} dominated by T = {','.join(map(str, fam.maximum()))}"
        + (f" ({search.dominated_out} not)" if search.dominated_out else ""))
    say(f"budget: |Θ| = {len(theta_list)}, n(ε={epsilon}) = {search.steps} steps, |B| = {batch_size}x{seq_len}; "
        f"rungs (steps x arms): {' -> '.join(f'{s}x{a}' for s, a in search.rungs)}; "
        f"{search.planned_steps} training steps, predicted ~{predicted / 60:.1f} min"
        + (f" over {world} processes" if world > 1 else ""))

    bar = None
    if progress and rank == 0:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=sum(s * -(-a // world) for s, a in search.rungs), unit="step", desc="extract",
                   dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)
    try:
        result = search.run(store, bar, rank, world, gather)
        seconds = time.perf_counter() - started
        check = None
        if check_factor and rank == 0:
            say(f"approximation check: {len(result.finalists) * len(theta_list)} finalist arms x "
                f"{check_factor * search.steps} steps")
            if bar is not None:
                bar.reset(total=len(result.finalists) * len(theta_list) * check_factor * search.steps)
            t0 = time.perf_counter()
            check = search.recheck(store, result, check_factor, bar)
            check["seconds"] = round(time.perf_counter() - t0, 1)
    finally:
        if bar is not None:
            bar.close()
    result.space_size, result.invalid = search_space.size, dict(search_space.invalid)
    summary = summarize(fam, result, settings, predicted, seconds, world)
    if check is not None:
        summary["approximation_check"] = check
        say(f"approximation check: W(ε choice) at {check['factor']}x budget = "
            f"{check['W_of_epsilon_choice_at_larger_budget']:.4f} vs best {check['W_at_larger_budget']:.4f} "
            f"({','.join(map(str, check['chosen_at_larger_budget']))}): ratio {check['ratio']:.3f}, "
            f"{'within' if check['within_1_minus_epsilon'] else 'NOT within'} 1 - ε = {1 - epsilon:.2f}")
    if rank == 0:
        write_outputs(out, fam, result, summary, teacher_name)
        say(f"done in {seconds / 60:.1f} min ({result.trained_steps} steps trained now, predicted "
            f"{predicted / 60:.1f} min); results in {out}")
    return ExtractionResult(result, fam, out, summary)


def build_surrogate(fam, source, teacher, corpus, thetas, epsilon, steps, batch_size, seq_len, hidden_loss, seed,
                    init="random"):
    """The default ê for built-in families: distillation (bert) or regression of the maximum point (mlp)."""
    from bort.search.fptas import steps_for_epsilon
    from bort.search.surrogate import DistillationSurrogate, ToySurrogate, complete_theta

    for theta in thetas:
        complete_theta(theta)
    if fam.name == "mlp":
        return ToySurrogate(fam, seed=seed), None
    if fam.name != "bert":
        raise BortError(f"family '{fam.name}' has no built-in surrogate; pass surrogate=callable to bort.extract")
    from bort.distill.data import check_corpus, pack_sequences, read_documents
    from bort.distill.teacher import load_teacher
    from bort.families.bert import PRESETS

    check_corpus(corpus)  # before the teacher is loaded
    if teacher is None:
        teacher = source
    loaded = load_teacher(teacher)
    if loaded.tokenizer.vocab_size > fam.source_config.vocab_size:
        raise BortError(f"the teacher's tokenizer has {loaded.tokenizer.vocab_size} tokens but the source's "
                        f"vocabulary has {fam.source_config.vocab_size}; use a teacher with the source's vocabulary")
    if seq_len > fam.max_seq_len:
        raise BortError(f"--seq-len {seq_len} exceeds the source's maximum {fam.max_seq_len}")
    n = steps if steps is not None else steps_for_epsilon(epsilon)
    wanted = 4 * n * batch_size + EVAL_SEQUENCES  # enough for the 4x-budget check without repeating data
    sequences = pack_sequences(read_documents(corpus), loaded.tokenizer, seq_len, max_sequences=wanted)
    source_model = None
    if init == "source":
        if str(source) in PRESETS:
            raise BortError(f"--init source needs a source with weights; preset '{source}' is a config only")
        source_model = loaded.model if str(teacher) == str(source) else load_teacher(source).model
    surrogate = DistillationSurrogate(fam, loaded, sequences, batch_size, EVAL_SEQUENCES, hidden_loss, seed=seed,
                                      source_model=source_model)
    return surrogate, loaded.name


def predict_seconds(fam, search: FPTAS, batch_size: int, seq_len: int) -> float:
    """The planned schedule's time, calibrated by timing the surrogate on the median-cost candidate.

    One untimed warm-up run, then runs of 1 and 3 steps give a per-step and a per-arm (build and
    held-out evaluation) time, which are scaled to every rung by the operation count. Later rungs are
    assumed to keep the cheapest candidates (W favours them); the run reports its real time beside this.
    """
    ops = sorted((fam.cost(c.arch, batch_size, seq_len).ops, c.arch) for c in search.pool)
    probe_ops, probe = ops[len(ops) // 2]
    theta = search.thetas[0]
    search.surrogate(probe, theta, 1, 0)  # warm-up: caches the teacher's outputs for the first batches

    def timed(steps: int) -> float:
        start = time.perf_counter()
        search.surrogate(probe, theta, steps, 0)
        return time.perf_counter() - start

    one, three = timed(1), timed(3)
    per_step, per_arm = max(three - one, 0.0) / 2, max(one - max(three - one, 0.0) / 2, 0.0)
    seconds = 0.0
    for steps, arms in search.rungs:
        cheapest = [o for o, _ in ops[:max(1, arms // len(search.thetas))]]
        scale = sum(cheapest) / len(cheapest) / probe_ops
        seconds += arms * scale * (steps * per_step + per_arm)
    return seconds


def candidate_summary(c: Candidate, names, maximum: Candidate | None = None) -> dict[str, Any]:
    out = {"arch": dict(zip(names, c.arch, strict=True)), "params": c.params, "effective_params": c.effective_params,
           "ops": c.ops, "latency_ms": c.latency_ms, "surrogate_error": c.error, "W": c.W, "steps": c.steps,
           "theta": c.theta}
    if maximum is not None:
        out["ratios_to_source"] = {
            "params": c.params / maximum.params, "effective_params": c.effective_params / maximum.effective_params,
            "ops": c.ops / maximum.ops,
            "latency": None if c.latency_ms is None else c.latency_ms / maximum.latency_ms}
    return out


def summarize(fam, result: SearchResult, settings, predicted: float, seconds: float, world: int) -> dict[str, Any]:
    import transformers

    import bort
    from bort.speed.latency import hardware_id

    names = fam.param_names
    return {
        "chosen": candidate_summary(result.constrained or result.chosen, names, result.maximum),
        "unconstrained_optimum": candidate_summary(result.chosen, names, result.maximum),
        "constrained": result.constrained is not None,
        "source": candidate_summary(result.maximum, names),
        "epsilon": settings["epsilon"], "n": result.steps, "thetas": settings["thetas"],
        "rungs": [{"steps": s, "arms": a} for s, a in result.rungs],
        "space_size": result.space_size, "invalid": result.invalid, "candidates": len(result.candidates),
        "dominated_out": result.dominated_out,
        "planned_steps": result.planned_steps, "trained_steps": result.trained_steps,
        "predicted_seconds": round(predicted, 1), "seconds": round(seconds, 1), "processes": world,
        "settings": settings,
        "versions": {"bort": bort.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "hardware": {"id": hardware_id(), "threads": torch.get_num_threads()},
    }


def write_outputs(out: Path, fam, result: SearchResult, summary: dict[str, Any], teacher_name: str | None) -> None:
    from bort.report import format_table, plot_pareto, write_candidates_csv, write_json_atomic

    names = fam.param_names
    measured = summary["settings"]["speed"] == "measured"
    write_candidates_csv(out / "candidates.csv", result.candidates, names)
    write_json_atomic(out / "result.json", summary)
    plot_pareto(out / "pareto.png", result.candidates, result.chosen, result.constrained, measured)
    chosen = result.constrained or result.chosen
    save_chosen(out / "chosen", fam, chosen.arch, teacher_name)
    front = sorted((c for c in result.candidates if c.pareto), key=lambda c: -c.W)[:10]
    print("Pareto front (top 10 by W):")
    print(format_table(front, names, result.maximum, measured))
    print(f"W-optimal: {','.join(names)} = {','.join(map(str, result.chosen.arch))}  "
          f"(params x{result.chosen.params / result.maximum.params:.3f}, W = {result.chosen.W:.4f})")
    if result.constrained is not None:
        print(f"under the constraints: {','.join(map(str, result.constrained.arch))} (W = {result.constrained.W:.4f})")
    elif summary["settings"]["constraints"] and any(v is not None for v in summary["settings"]["constraints"].values()):
        print("no finalist satisfies the constraints; the W-optimum is reported instead")


def save_chosen(folder: Path, fam, arch, teacher_name: str | None) -> None:
    """A save_pretrained folder: the chosen config and the teacher's tokenizer, ready for `bort pretrain`."""
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(fam, "config"):
        fam.config(arch).save_pretrained(folder)
        if teacher_name is not None:
            from bort.distill.teacher import load_tokenizer

            load_tokenizer(teacher_name).save_pretrained(folder)
    else:
        (folder / "arch.json").write_text(json.dumps(dict(zip(fam.param_names, arch, strict=True))) + "\n")
