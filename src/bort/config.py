"""Every option of every command, written once.

The CLI's flags, the Python API's keywords and `--config FILE.yaml` all come from these dataclasses: a default, a
help text and a validity rule live in one field. This module imports nothing heavy, so `bort --help` stays fast.
Bad values are refused here, in one line that names the flag and the fix.
"""

from __future__ import annotations

import itertools
import math
import os
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from bort.errors import BortError
from bort.io import read_yaml

# onnx*: the graph `bort export` writes (fused for BERT models); onnx-unfused*: the dynamo exporter's graph as is
RUNTIMES = ("torch", "compile", "onnx", "onnx-int8", "onnx-unfused", "onnx-unfused-int8")
LATENCY_RUNTIMES = ("torch", "onnx", "onnx-int8")  # what a search can time each candidate in
# options that name what a run reads: one that exists on disk is kept as its absolute path, so a run resumed from
# another folder, or with the path spelled another way (../data, ./data, /abs/data), is the same run and keeps its
# finished work; hub names, presets and D,A,H,I shapes are not on disk and stay as given
INPUT_PATHS = frozenset({"model", "source", "teacher", "teacher_from", "labeller", "labeller_from", "infill_model",
                         "arch", "space", "corpus", "data_dir", "train_file", "dev_file", "test_file"})


def option(default: Any = MISSING, help: str = "", *, flag: str | None = None, choices: tuple | None = None,
           minimum: float | None = None, above: float | None = None, maximum: float | None = None,
           group: str | None = None, cli: bool = True, metavar: str | tuple | None = None,
           required: bool = False, identity: bool = True, added: bool = False) -> Any:
    """A config field: its default, CLI help and validity rule (`minimum` <=, `above` <, `maximum` >=);
    `identity=False` marks what may change when a run resumes (logging cadence, the output folder, bars);
    `added=True` an option newer than runs on disk: at its default it is left out of a run's identity, so they
    resume."""
    meta = dict(help=help, flag=flag, choices=choices, minimum=minimum, above=above, maximum=maximum,
                group=group, cli=cli, metavar=metavar, required=required, identity=identity, added=added)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f) -> Any:
    """A field's default, a list option's included."""
    return f.default if f.default is not MISSING else f.default_factory()


def flag_of(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@dataclass(kw_only=True)
class Options:
    """Checks and normalises every field by its type and rule when a config is made (from flags, YAML or
    keywords): a wrong value is one line naming the flag, before any work."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value, kind, name = getattr(self, f.name), hints[f.name], flag_of(f)
            optional = type(None) in typing.get_args(kind)
            if value is None:
                if f.metadata.get("required") or not optional:
                    raise BortError(f"{name} needs a value")
                continue
            kind = next(k for k in typing.get_args(kind) if k is not type(None)) if optional else kind
            setattr(self, f.name, _typed(name, kind, value, f))

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def identity(self) -> dict[str, Any]:
        """The options a resumed run must share with the run it continues."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("identity", True)
                and not (f.metadata.get("added") and getattr(self, f.name) == default_of(f))}


def _typed(name: str, kind: Any, value: Any, f) -> Any:
    """`value` as `kind` (a scalar for a list option is a list of one; YAML's '5e-4' is a number), checked."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (list, tuple):
        values = [_typed(name, args[0], v, f) for v in (value if isinstance(value, list | tuple) else [value])]
        if origin is tuple and len(values) != len(args):
            raise BortError(f"{name} takes {len(args)} values, not {len(values)}")
        if not values and f.default_factory is not MISSING and f.default_factory():
            raise BortError(f"{name} needs at least one value")
        return tuple(values) if origin is tuple else values
    if f.metadata.get("choices") and value not in f.metadata["choices"]:
        raise BortError(f"{name} must be one of {', '.join(map(str, f.metadata['choices']))}, not '{value}'")
    if kind is bool and not isinstance(value, bool):
        raise BortError(f"{name} is true or false, not {value!r}")
    if kind not in (int, float):
        if not isinstance(value, str | Path):
            return value
        on_disk = Path(value).expanduser() if f.name in INPUT_PATHS and str(value) else None
        return os.path.abspath(on_disk) if on_disk and on_disk.exists() else str(value)
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise BortError(f"{name} must be a finite {'whole ' if kind is int else ''}number, not {value!r}")
    for rule, fails, words in (("minimum", number.__lt__, "at least"), ("above", number.__le__, "above"),
                               ("maximum", number.__gt__, "at most")):
        if f.metadata.get(rule) is not None and fails(f.metadata[rule]):
            raise BortError(f"{name} must be {words} {f.metadata[rule]:g}, not {number:g}")
    return int(number) if kind is int else number


def make(cls: type[Options], **options: Any) -> Any:
    if unknown := sorted(set(options) - set(cls.names())):
        raise BortError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(cls.names())}")
    return cls(**options)


def like(base: type, name: str, default: Any, **changes: Any) -> Any:
    """Field `name` of `base` with another default: one help text and rule, a default per command."""
    return option(default, **{**base.__dataclass_fields__[name].metadata, **changes})


@dataclass(kw_only=True)
class RunConfig(Options):
    """What every command that writes a run folder shares."""

    output: str | None = option(None, "results folder", identity=False)
    resume: bool = option(False, "continue the run in --output from where it stopped", identity=False)
    overwrite: bool = option(False, "replace the run in --output (only a folder bort wrote)", identity=False)
    progress: bool = option(True, "no progress bars", flag="--quiet", identity=False)
    max_seq_len: int = option(128, "tokens per row: packed corpus rows, or the truncation length of task inputs",
                              minimum=8)


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    """How the one training engine optimises any objective: pre-training, fine-tuning, each surrogate arm."""

    max_steps: int | None = option(None, "optimizer steps", minimum=1)
    lr: float = option(5e-5, "peak learning rate (AdamW, linear warm-up then linear decay)", above=0)
    warmup: float = option(0.1, "warm-up: a fraction of the steps (< 1) or a number of steps", minimum=0)
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm weights)", minimum=0)
    max_grad_norm: float = option(1.0, "gradients are clipped to this norm", above=0)
    batch_size: int = option(32, "training rows per process per micro-step", minimum=1)
    grad_accum: int = option(1, "micro-steps per optimizer step (gradient accumulation)", minimum=1)
    seed: int = option(0, "random seed: weights, data order, masks and dropout are functions of it", minimum=0,
                       maximum=2**32)
    mixed_precision: str = option("auto", "GPU only (CPU runs stay fp32); auto = bf16 where supported, else fp16",
                                  choices=("auto", "no", "fp16", "bf16"))
    save_every: int = option(500, "checkpoint every N steps (0: only at the end)", minimum=0, identity=False)
    log_every: int = option(10, "write the training loss terms to metrics.jsonl every N steps", minimum=1,
                            identity=False)
    eval_every: int = option(100, "held-out evaluation every N steps (0: never)", minimum=0, identity=False)

    def warmup_steps(self, total: int) -> int:
        """The one warm-up rule: a fraction of the run (rounded up) when < 1, else a number of steps."""
        return math.ceil(self.warmup * total) if self.warmup < 1 else int(self.warmup)


@dataclass(kw_only=True)
class DistillConfig(Options):
    """The distillation objective and its corpus: what `bort pretrain` trains and what the search's ê measures."""

    corpus: list[str] = option([], "text files or folders, or hf:NAME[:CONFIG] for a `datasets` corpus (default: "
                                   "the English documentation that ships with Python)", metavar="PATH")

    mask_prob: float = option(0.15, "share of the tokens masked (80% [MASK], 10% random, 10% kept)", above=0, maximum=1)
    temperature: float = option(2.0, "softmax temperature T of the KL term", above=0)
    mlm_weight: float = option(0.1, "weight of the student's masked-LM cross-entropy", minimum=0)
    kd_weight: float = option(0.5, "weight of T^2 KL(teacher || student) (teachers with an MLM head)", minimum=0)
    hidden_weight: float = option(1.0, "weight of the hidden-state loss (teachers without an MLM head)", minimum=0)
    hidden_loss: str = option("mse", "hidden-state distance: mse (normalised by the teacher's variance) or cosine",
                              choices=("mse", "cosine"))
    attention_weight: float = option(0.0, "weight of MiniLMv2 attention-relation distillation (0: off)", minimum=0)
    init: str = option("random", "start the student at random or as a slice of the source's weights",
                       choices=("random", "source"))

    def check_weights(self, teacher_has_mlm_head: bool) -> None:
        """Refuse an objective with nothing in it for this kind of teacher (before any work)."""
        used = ("mlm_weight", "kd_weight" if teacher_has_mlm_head else "hidden_weight", "attention_weight")
        if not any(getattr(self, name) for name in used):
            flags = ", ".join("--" + name.replace("_", "-") for name in used)
            raise BortError(f"every loss weight this teacher uses is 0 ({flags}), so there is nothing to train; set "
                            "one above 0")


@dataclass(kw_only=True)
class ExtractConfig(DistillConfig, RunConfig):
    """`bort extract`: the FPTAS over a family's space."""

    family: str = option("bert", "network family")
    source: str | None = option(None, "model folder, config.json, hub name or preset (default: embedded MiniLM)")
    teacher: str | None = option(None, "model that defines the surrogate error (default: the source)")
    space: str | dict = option("default", "'default', 'bort-paper', or a JSON/YAML file mapping parameters to values")
    epsilon: float = option(0.2, "approximation parameter ε; a finalist trains n(ε) = ceil(8/ε) steps", above=0,
                            maximum=0.99)
    steps: int | None = option(None, "override n(ε), the surrogate steps of a finalist", minimum=1)
    theta: str = option("lr=1e-3,3e-3", "Θ, training hyperparameters each candidate is tried with: a grid "
                        "'KEY=V1,V2;KEY=V3' over --lr/--warmup/--weight-decay, or a JSON/YAML file")
    lr: float = like(TrainConfig, "lr", 1e-3)
    warmup: float = like(TrainConfig, "warmup", 0.1)
    weight_decay: float = like(TrainConfig, "weight_decay", 0.01)
    batch_size: int = like(TrainConfig, "batch_size", 8)
    max_seq_len: int = like(RunConfig, "max_seq_len", 64)
    mixed_precision: str = like(TrainConfig, "mixed_precision", "auto")
    speed: str = option("ops", "i(ξ): analytic operation count, or measured latency", choices=("ops", "measured"))
    latency_batch_size: int = option(1, "reference shape of i(ξ): batch size", minimum=1)
    latency_seq_len: int = option(128, "reference shape of i(ξ): sequence length", minimum=1)
    latency_runtime: str = option("torch", "runtime of measured latency: PyTorch eager, or the ONNX Runtime model "
                                  "`bort export` ships (fp32 or int8): time in the runtime you deploy",
                                  choices=LATENCY_RUNTIMES, added=True)
    speedup: float | None = option(None, "target: at least K times faster than the source (operation count, or "
                                         "measured latency with --speed measured); with any target, the most accurate "
                                         "finalist (lowest ê) that meets them all is chosen", minimum=1, metavar="K")
    max_params: float | None = option(None, "target: at most this many parameters", above=0)
    max_effective_params: float | None = option(None, "target: at most this many non-embedding parameters", above=0)
    max_latency_ms: float | None = option(None, "target: measured latency at the reference shape", above=0)
    halving: bool = option(True, "train every candidate for n(ε) (the paper's schedule)", flag="--no-halving")
    check_factor: int | None = option(None, "approximation check: retrain the finalists with this x n(ε)", minimum=2,
                                      identity=False)
    output: str | None = like(RunConfig, "output", None, help="results folder (default: runs/extract-<time>)")
    seed: int = like(TrainConfig, "seed", 0, help="random seed of the search (data, masks and each arm's seed)")

    def __post_init__(self) -> None:
        super().__post_init__()
        timed_in_runtime(self)


@dataclass(kw_only=True)
class PretrainConfig(TrainConfig, DistillConfig):
    """`bort pretrain`: distil an architecture from the teacher on a corpus."""

    arch: str = option(None, "chosen/ folder from `bort extract`, a config.json, or D,A,H,I cut from --source",
                       required=True)
    output: str = like(RunConfig, "output", None, help="folder for the model, checkpoints and metrics.jsonl",
                       required=True)
    teacher: str | None = option(None, "teacher folder or hub name (default: embedded all-MiniLM-L6-v2)")
    source: str | None = option(None, "model that D,A,H,I and --init source cut from (default: the teacher)")
    max_steps: int = like(TrainConfig, "max_steps", 1000)
    lr: float = like(TrainConfig, "lr", 5e-4)
    warmup: float = like(TrainConfig, "warmup", 0.06)
    eval_sequences: int = option(64, "held-out sequences for evaluation", minimum=1)
    max_sequences: int | None = option(None, "use at most this many packed sequences of the corpus", minimum=1)
    cache_dir: str | None = option(None, "token cache folder (default: $BORT_CACHE/tokens)", identity=False)
    measure_latency: bool = option(True, "skip the CPU latency measurement for the model card", flag="--no-latency",
                                   identity=False)


GENERATED = "generated points (--augment, Agora)"


@dataclass(kw_only=True)
class FinetuneConfig(TrainConfig):
    """`bort finetune`: fine-tune a model on a task, once per seed."""

    model: str | None = option(None, "model folder or hub name (default: the embedded MiniLM)")
    task: str = option(None, "task name (GLUE/SuperGLUE official or `datasets` name, e.g. STS-B or stsb), or a "
                             "name for your own --train/--dev files", required=True)
    output: str = like(RunConfig, "output", None, required=True)
    data_dir: str | None = option(None, "folder in the official layout (glue/<Task>/*.tsv, superglue/<Task>/*.jsonl); "
                                        "default $BORT_DATA_DIR, else the hub", identity=False)
    seeds: list[int] = option([0], "one run per seed", minimum=0, maximum=2**32, identity=False)
    seed: int = like(TrainConfig, "seed", 0, cli=False)  # each run's, taken from --seeds
    epochs: float = option(3.0, "passes over the train set (unless --max-steps)", above=0)
    max_train_samples: int | None = option(None, "one random subsample of the train split, the same for every seed",
                                           minimum=1)
    save_every: int = like(TrainConfig, "save_every", 100)
    eval_batch_size: int = option(64, "rows per prediction batch", minimum=1, identity=False)
    eval_every: int = like(TrainConfig, "eval_every", 0, cli=False)  # the official dev split is scored at the end
    train_file: str | None = option(None, "custom task: train file (.csv, .tsv or .jsonl)", flag="--train")
    dev_file: str | None = option(None, "custom task: dev file", flag="--dev")
    test_file: str | None = option(None, "custom task: unlabelled test file", flag="--test")
    text_column: str = option("text", "custom task: text column")
    pair_column: str | None = option(None, "custom task: second text column")
    label_column: str = option("label", "custom task: label column")
    kind: str = option("classification", "custom task: head kind", choices=("classification", "regression"))
    measure_latency: bool = option(True, "skip the CPU latency measurement", flag="--no-latency", identity=False)
    teacher: str | None = option(None, "model fine-tuned on this task: the student also learns its outputs (task "
                                       "distillation)", metavar="DIR", group="task distillation")
    teacher_from: str | None = option(None, "model to fine-tune on the task first (seed 0, same settings), then use "
                                            "as --teacher", metavar="MODEL", group="task distillation")
    alpha: float = option(0.5, "weight of the gold-label loss; 1 - alpha goes to the teacher's outputs", minimum=0,
                          maximum=1, group="task distillation")
    temperature: float = option(2.0, "softmax temperature of the teacher's and the student's logits", above=0,
                                group="task distillation")
    hidden_weight: float = option(0.0, "weight of a hidden-state term (TinyBERT): the embeddings and each student "
                                       "layer against the teacher's layer at the same relative depth, on every "
                                       "token; 0: logits only", minimum=0, group="task distillation",
                                added=True)
    augment: float = option(0.0, "with a teacher: add N x the train set in new points made by --transform from random "
                                 "train points and labelled by the teacher's outputs (TinyBERT's data augmentation); "
                                 "0: none", minimum=0, group="task distillation", metavar="N", added=True)
    band: tuple[float, float] = option((0.80, 0.98), "keep generated points whose cosine similarity to the source lies "
                                       "in [LOW, HIGH]", minimum=0, maximum=1, group=GENERATED, metavar=("LOW", "HIGH"))
    transform: str = option("neighbour", "embedding nearest-neighbour token substitution, or masked-LM infilling",
                            choices=("neighbour", "infill"), group=GENERATED)
    replace_fraction: float = option(0.15, "share of word tokens a transform changes", above=0, maximum=1,
                                     group=GENERATED)
    infill_model: str | None = option(None, "masked-LM folder for --transform infill (e.g. a `bort pretrain` "
                                            "output)", group=GENERATED)

    def __post_init__(self) -> None:
        super().__post_init__()
        task_files(self)
        if self.band[0] > self.band[1]:
            raise BortError(f"--band LOW HIGH needs LOW <= HIGH, not {self.band[0]} {self.band[1]}")
        if self.transform == "infill" and not self.infill_model:
            raise BortError("--transform infill needs --infill-model DIR, a masked-LM (a `bort pretrain` output keeps "
                            "its MLM head)")
        if self.teacher and self.teacher_from:
            raise BortError("pass one of --teacher DIR (fine-tuned on the task) or --teacher-from MODEL (fine-tuned "
                            "here first), not both")

    def task_files(self) -> dict[str, Any]:
        return task_files(self)


@dataclass(kw_only=True)
class AgoraConfig(FinetuneConfig):
    """`bort finetune --agora`: rounds of fine-tuning, generating points near mistakes, labelling them."""

    labeller: str | None = option(None, "model folder already fine-tuned on the task", group="Agora")
    labeller_from: str | None = option(None, "model to fine-tune on the task first and use as labeller", group="Agora")
    theta: str | None = option(None, "Θ: a grid 'KEY=V1,V2;KEY=V3' over --lr/--weight-decay/--warmup/--batch-size/"
                                     "--epochs on top of those flags, or a JSON/YAML file", group="Agora")
    rounds: int = option(3, "Agora rounds", minimum=1, group="Agora")
    samples_per_mistake: int = option(4, "new points generated per mistake", minimum=1, group="Agora")
    agora_dev_fraction: float = option(0.1, "share of the official train split carved out (stratified) as Agora's "
                                            "dev split: mistakes come from one half, the returned round is chosen "
                                            "on the other", above=0, maximum=0.9, group="Agora")
    prune: float = option(0.5, "share of Θ's sets dropped after each round", minimum=0, maximum=0.99, group="Agora")
    max_mistakes: int | None = option(None, "use at most this many mistakes per round", minimum=1, group="Agora")
    compare: bool = option(False, "also fine-tune plainly (distilled, with a teacher) with the same seeds, sets and "
                                  "optimizer steps as Agora's returned models", group="Agora", identity=False)
    uniform_control: bool = option(False, "also train the uniform-augmentation control: as many points as Agora "
                                          "generated, by the same transform from random train points, labelled the "
                                          "same way, with the same seeds, sets and optimizer steps", group="Agora",
                                  identity=False)


@dataclass(kw_only=True)
class CostConfig(Options):
    """`bort cost`: size and cost of one architecture."""

    arch: str = option(None, "comma-separated parameters, e.g. 4,8,1024,768 for D,A,H,I", required=True)
    family: str = option("bert", "network family")
    source: str | None = option(None, "source model folder, config.json, hub name or preset (bert family)")
    batch_size: int = option(1, "batch size of the operation count", minimum=1)
    seq_len: int = option(128, "sequence length of the operation count", minimum=1)
    measure: bool = option(False, "also measure the median latency on this machine")
    repeats: int = option(10, "timed runs", minimum=1)
    overwrite: bool = option(False, "replace an existing --json file", identity=False)


@dataclass(kw_only=True)
class BenchConfig(Options):
    """`bort bench`: side-by-side latency of several models."""

    models: list[str] = option(None, "model folders, config.json files, hub names or presets (bert-large, bert-base, "
                                   "bort); LABEL=SOURCE names one; ratios are against the first", required=True)
    runtimes: list[str] = option(["torch"], "runtimes to time", flag="--runtime", choices=RUNTIMES)
    batch_sizes: list[int] = option([1], "batch sizes to time", flag="--batch-size", minimum=1)
    seq_lens: list[int] = option([128], "sequence lengths to time", flag="--seq-len", minimum=1)
    threads: int | None = option(None, "intra-op threads for every runtime (default: torch's)", minimum=1)
    repeats: int = option(10, "timed runs per cell", minimum=1)
    warmup_runs: int = option(2, "untimed runs per cell first", minimum=0)
    max_seconds: float | None = option(None, "stop timing a cell after this many seconds (>= 3 runs)", above=0)
    plot: str | None = option(None, "write a latency plot (png, pdf, svg)", metavar="FILE")
    device: str = option("cpu", "where the PyTorch runtimes (torch, compile) run; ONNX Runtime stays on the CPU",
                         choices=("cpu", "cuda"))
    overwrite: bool = option(False, "replace an existing --json or --plot file", identity=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.plot is not None and Path(self.plot).suffix.lower() not in (".png", ".pdf", ".svg"):
            raise BortError(f"--plot {self.plot}: name a .png, .pdf or .svg file")


@dataclass(kw_only=True)
class ExportConfig(Options):
    """`bort export`: ONNX (optionally int8), checked against PyTorch."""

    model: str = option(None, "model folder, config.json, hub name or preset", required=True)
    output: str = option(None, "folder for model.onnx, tokenizer and config", required=True)
    format: str = option("onnx", "export format", choices=("onnx",))
    quantize: str | None = option(None, "also write model_int8.onnx (dynamic quantization)", choices=("int8",))
    opset: int = option(18, "ONNX opset", minimum=13)
    tolerance: float = option(1e-3, "max abs diff allowed vs PyTorch (fp32)", above=0)
    fuse: bool = option(True, "keep the dynamo exporter's graph (no onnxruntime BERT fusions)", flag="--no-fuse")
    dev_file: str | None = option(None, "labelled dev file (.tsv/.csv/.jsonl): accuracy of a fine-tuned classifier "
                                         "in PyTorch, ONNX and int8", flag="--dev", metavar="FILE")
    threads: int | None = option(None, "onnxruntime threads of the checks", minimum=1)
    overwrite: bool = like(RunConfig, "overwrite", False)


def parse_theta(theta: str | list | dict | None, base: Options, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Θ, one grammar for every command: a grid 'lr=1e-3,3e-3;warmup=0.1' (`;` between keys, `,` between
    values: every combination), a mapping key -> values (a grid), a list of mappings (points), or a JSON/YAML
    file holding either. Each point overrides the flags `keys` of `base` and is checked like them."""
    if isinstance(theta, str) and Path(theta).is_file():
        theta = read_yaml(theta, "--theta")
    if isinstance(theta, str):
        grid: dict[str, list] = {}
        for part in filter(None, (p.strip() for p in theta.split(";"))):
            key, sep, values = (x.strip() for x in part.partition("="))
            if key in grid:
                raise BortError(f"--theta: {key} is given twice; list its values once: {key}=V1,V2")
            if not sep or not values:
                raise BortError(f"--theta: '{part}' is not KEY=V1,V2 (e.g. 'lr=1e-3,3e-3;warmup=0.1')")
            grid[key] = values.split(",")
        theta = grid
    if isinstance(theta, dict):
        axes = [v if isinstance(v, list) else [v] for v in theta.values()]
        theta = [dict(zip(theta, combo, strict=True)) for combo in itertools.product(*axes)]
    if not isinstance(theta, list | None) or not all(isinstance(p, dict) for p in theta or []):
        raise BortError("--theta must be a grid 'KEY=V1,V2;...', a mapping of lists or a list of mappings")
    hints, points = typing.get_type_hints(type(base)), []
    for point in theta or [{}]:
        clean = {str(k).strip().replace("-", "_"): v for k, v in point.items()}
        for key, value in clean.items():
            if key not in keys:
                raise BortError(f"--theta: unknown key '{key}'; use {', '.join(keys)}")
            try:
                clean[key] = int(value) if hints[key] in (int, int | None) else float(value)
            except (TypeError, ValueError):
                raise BortError(f"--theta: {key}={value!r} is not a number") from None
        points.append(clean)
        type(base)(**{**base.to_dict(), **clean})  # each point is checked like the flags it overrides
    return points or [{}]


DEFAULT_SPEEDUP = 4.0  # `bort run`'s target when none is named


@dataclass(kw_only=True)
class PipelineConfig(RunConfig):
    """`bort run`: from a source model and a task to a deployable small model, with a report."""

    source: str | None = option(None, "source model with weights: folder or hub name (default: the embedded MiniLM); "
                                      "the teacher's starting point, the search's maximum and the student's slice")
    task: str = like(FinetuneConfig, "task", None, required=True)
    output: str = like(RunConfig, "output", None, required=True)
    data_dir: str | None = like(FinetuneConfig, "data_dir", None)
    train_file: str | None = like(FinetuneConfig, "train_file", None)
    dev_file: str | None = like(FinetuneConfig, "dev_file", None)
    text_column: str = like(FinetuneConfig, "text_column", "text")
    pair_column: str | None = like(FinetuneConfig, "pair_column", None)
    label_column: str = like(FinetuneConfig, "label_column", "label")
    kind: str = like(FinetuneConfig, "kind", "classification")
    teacher: str | None = option(None, "a model already fine-tuned on the task, used as given (skips the teacher "
                                       "stage)", metavar="DIR")
    agora: bool = option(False, "fine-tune the student with Agora (soft labels from the teacher)")
    speedup: float | None = like(ExtractConfig, "speedup", None, help=(
        "target: at least K times faster than the source (measured latency, or the operation count with --speed "
        f"ops); {DEFAULT_SPEEDUP:g} when no other target is named"))
    max_latency_ms: float | None = like(ExtractConfig, "max_latency_ms", None)
    max_params: float | None = like(ExtractConfig, "max_params", None)
    speed: str = like(ExtractConfig, "speed", "measured")
    latency_runtime: str = like(ExtractConfig, "latency_runtime", "torch")
    budget_minutes: float = option(60.0, "time for all stages, split by the rule in the README", above=0)
    seeds: list[int] = like(FinetuneConfig, "seeds", [0])
    corpus: list[str] = like(DistillConfig, "corpus", [], help=(
        "text files or folders, or hf:NAME[:CONFIG], for the search and the pre-training (default: the task's train "
        "text and the English documentation that ships with Python, written into the run's corpus/ folder)"))
    max_train_samples: int | None = like(FinetuneConfig, "max_train_samples", None)

    def __post_init__(self) -> None:
        super().__post_init__()
        task_files(self)
        timed_in_runtime(self)
        if not any(v is not None for v in (self.speedup, self.max_latency_ms, self.max_params)):
            self.speedup = DEFAULT_SPEEDUP


def timed_in_runtime(config: Options) -> None:
    """--latency-runtime is used only where latency is measured; otherwise it would be silently ignored."""
    if config.latency_runtime != "torch" and config.speed != "measured" and config.max_latency_ms is None:
        raise BortError(f"--latency-runtime {config.latency_runtime} times candidates, but --speed ops counts "
                        "operations; add --speed measured")


def task_files(config: Options) -> dict[str, Any]:
    """The custom-task options of `bort finetune` and `bort run` (empty for a registered task), checked."""
    if not getattr(config, "train_file", None):
        return {}
    if not config.dev_file:
        raise BortError("--train needs --dev: every score is reported on a labelled dev split")
    names = ("train_file", "dev_file", "test_file", "text_column", "pair_column", "label_column", "kind")
    return {k: getattr(config, k) for k in names if hasattr(config, k)}


def option_flags() -> dict[str, str]:
    """Every option's name and its flag, over all commands (how errors name a setting)."""
    out: dict[str, str] = {}
    for cls in (ExtractConfig, PretrainConfig, AgoraConfig, CostConfig, BenchConfig, ExportConfig):
        out.update({f.name: flag_of(f) for f in fields(cls) if f.metadata.get("cli", True)})
    return out
