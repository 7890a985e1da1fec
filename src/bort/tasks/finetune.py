"""`bort finetune`: the engine with a task objective, once per seed, and the outputs users deploy.

A finished run is a stock `save_pretrained` folder that loads with AutoModelForSequenceClassification (or
AutoModelForMultipleChoice for COPA): the best seed's model at the top of `--output`, every seed's below it.
The batch order is a function of (seed, epoch), so a run resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bort import io
from bort.config import FinetuneConfig
from bort.engine.loop import Engine
from bort.engine.task import TaskObjective
from bort.errors import BortError
from bort.families.bert import positions
from bort.tasks.generic import file_task
from bort.tasks.metrics import compute, mean_std
from bort.tasks.registry import Example, Task, get_task

log = logging.getLogger("bort")
DONE = "train_state.json"  # written last: its presence means the folder holds a finished model
DISTILLATION_OPTIONS = ("teacher", "teacher_from", "alpha", "temperature", "hidden_weight")
GENERATION_OPTIONS = ("band", "transform", "replace_fraction", "infill_model")  # how --augment and Agora make points


def load_task_model(source: str | os.PathLike, task: Task) -> torch.nn.Module:
    """The source encoder with a fresh task head (or a fine-tuned folder as it is)."""
    config = io.load_config(source)
    if task.kind == "multiple_choice":
        return io.load_model(source, "multiple-choice", config)
    config.num_labels = task.num_labels
    if task.kind == "classification":
        config.id2label = dict(enumerate(task.labels))
        config.label2id = {label: i for i, label in enumerate(task.labels)}
    config.problem_type = "regression" if task.kind == "regression" else "single_label_classification"
    return io.load_model(source, "classification", config, ignore_mismatched_sizes=True)


def encode(tokenizer: Any, task: Task, examples: list[Example], max_seq_len: int) -> dict[str, torch.Tensor]:
    """Token tensors of a batch; multiple choice gives (batch, choices, length)."""
    if task.kind == "multiple_choice":
        n = task.num_choices
        enc = tokenizer([e.text for e in examples for _ in range(n)], [c for e in examples for c in e.choices],
                        truncation=True, max_length=max_seq_len, padding=True, return_tensors="pt")
        return {k: v.view(len(examples), n, -1) for k, v in enc.items()}
    pairs = [e.pair or "" for e in examples] if any(e.pair is not None for e in examples) else None
    return dict(tokenizer([e.text for e in examples], pairs, truncation=True, max_length=max_seq_len,
                          padding=True, return_tensors="pt"))


def targets(task: Task, examples: list[Example]) -> torch.Tensor:
    values = [task.label_index(e.label) for e in examples]
    return torch.tensor(values, dtype=torch.float if task.kind == "regression" else torch.long)


class TaskBatches:
    """The rows of each step: a seeded permutation of the train set per epoch, sliced into global batches. With
    `soft` (a teacher's outputs, one row per example, computed once), each batch carries its rows' `teacher`."""

    def __init__(self, task: Task, examples: list[Example], tokenizer: Any, config: FinetuneConfig,
                 soft: torch.Tensor | None = None):
        self.task, self.examples, self.tokenizer, self.config, self.soft = task, examples, tokenizer, config, soft
        self._epoch, self._order = -1, []

    def steps(self, world: int) -> int:
        """Optimizer steps of the run: --max-steps, or --epochs over global batches."""
        c = self.config
        per_epoch = math.ceil(len(self.examples) / (c.batch_size * c.grad_accum * world))
        return int(c.max_steps) if c.max_steps else max(1, math.ceil(c.epochs * per_epoch))

    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        c, n = self.config, len(self.examples)
        global_batch = c.batch_size * c.grad_accum * world
        epoch, offset = divmod(step, math.ceil(n / global_batch))
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(c.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(n, generator=generator).tolist()
        start = offset * global_batch + (micro * world + rank) * c.batch_size
        index = [self._order[(start + j) % n] for j in range(c.batch_size)]
        rows = [self.examples[i] for i in index]
        batch = {**encode(self.tokenizer, self.task, rows, c.max_seq_len), "labels": targets(self.task, rows)}
        return batch if self.soft is None else {**batch, "teacher": self.soft[index]}


@torch.inference_mode()
def predict(model: torch.nn.Module, tokenizer: Any, task: Task, examples: list[Example], max_seq_len: int = 128,
            batch_size: int = 64) -> np.ndarray:
    """Raw head outputs: logits (n, classes or choices), or scores (n,) for regression."""
    device = next(model.parameters()).device
    model.eval()
    outs = []
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in encode(tokenizer, task, examples[i:i + batch_size], max_seq_len).items()}
        outs.append(model(**batch).logits.float().cpu())
    out = torch.cat(outs).numpy() if outs else np.zeros((0, max(task.num_labels, task.num_choices)))
    return out[:, 0] if task.kind == "regression" else out


def decide(task: Task, outputs: np.ndarray) -> np.ndarray:
    """Predictions from raw outputs: class/choice indices, or scores for regression."""
    return outputs if task.kind == "regression" else outputs.argmax(-1)


def evaluate(model: torch.nn.Module, tokenizer: Any, task: Task, examples: list[Example],
             config: FinetuneConfig) -> tuple[dict[str, float], np.ndarray]:
    """The task's metrics on labelled examples, and the predictions (head indices or scores)."""
    preds = decide(task, predict(model, tokenizer, task, examples, config.max_seq_len, config.eval_batch_size))
    gold = [task.label_index(e.label) for e in examples]
    return compute(task.metrics, preds, gold), preds


def train(source: str | os.PathLike, task: Task, examples: list[Example], config: FinetuneConfig,
          folder: str | os.PathLike, resume: bool = False, tokenizer: Any = None,
          soft: np.ndarray | None = None, teacher: torch.nn.Module | None = None) -> tuple[torch.nn.Module, int]:
    """Fine-tune `source` on `examples`; save a stock folder in `folder`. Returns (model, optimizer steps). A folder
    holding a finished run with the same settings is loaded, not retrained (other settings are an error); with `resume`,
    a checkpoint left by a crash is continued. `soft`, a teacher's outputs for `examples`, adds task distillation
    (`config.alpha`, `config.temperature`); `teacher`, the model itself, its hidden states (`config.hidden_weight`)."""
    if not examples:
        raise BortError(f"task {task.name}: the train set is empty")
    folder = Path(folder)
    tokenizer = tokenizer or io.load_tokenizer(source)
    batches = TaskBatches(task, examples, tokenizer, config, None if soft is None else torch.as_tensor(soft).float())
    world = io.process()[1]
    steps = batches.steps(world)
    # options that change nothing in this run: distillation without a teacher, generation without augmentation
    unused = (DISTILLATION_OPTIONS if soft is None else ()) + (GENERATION_OPTIONS if not config.augment else ())
    fingerprint = io.strict_json({**{k: v for k, v in config.identity().items() if k in FinetuneConfig.names()
                                     and k not in unused},
                                  "max_steps": steps, "source": str(source),
                                  "task": task.name, "n_train": len(examples), "world": world,
                                  **({"distilled": True} if soft is not None else {})})
    if (folder / DONE).is_file():
        saved = io.read_json(folder / DONE)
        io.same_settings(saved.get("fingerprint", {}), fingerprint, f"the finished run in {folder}")
        return load_task_model(folder, task), saved["steps"]
    torch.manual_seed(config.seed)
    model = load_task_model(source, task)
    objective = TaskObjective(model, task.kind == "regression", config.alpha if soft is not None else 1.0,
                              config.temperature, teacher if soft is not None else None, config.hidden_weight)
    engine = Engine(objective, batches, replace(config, max_steps=steps),
                    folder, fingerprint, desc=f"fine-tune {task.name} seed {config.seed}", progress=config.progress)
    engine.run(resume=resume)
    if io.is_main():
        io.save_model(folder, model, tokenizer)
        io.write_json(folder / DONE, {"steps": steps, "n_train": len(examples), "fingerprint": fingerprint})
        io.remove_checkpoints(engine.checkpoint_dir)  # the model is saved: its checkpoints are spent
    io.barrier()
    return model.eval(), steps


@dataclass
class TaskData:
    """The splits one run uses: train, the official dev split(s), and the unlabelled test split(s)."""

    task: Task
    train: list[Example]
    dev: dict[str, list[Example]]
    test: dict[str, list[Example]]


def majority_score(task: Task, data: TaskData) -> dict[str, float]:
    """The official-dev score of always predicting the most common train label (the mean score for regression):
    the floor a labeller must clear for Agora's premise to hold, and a student to have learned the task."""
    dev = next(iter(data.dev.values()))
    gold = [task.label_index(e.label) for e in dev]
    train = [task.label_index(e.label) for e in data.train]
    guess = sum(train) / len(train) if task.kind == "regression" else max(set(train), key=train.count)
    return compute(task.metrics, [guess] * len(dev), gold)


def resolve_task(task: str | Task, train_file: str | None = None, dev_file: str | None = None,
                 test_file: str | None = None, **columns: Any) -> Task:
    """A registered task, or a custom one when files are given (--train/--dev/--test)."""
    if train_file:
        return file_task(train_file, dev_file, test_file, name=str(task or "custom"), **columns)
    return get_task(task)


def load_data(task: Task, data_dir: str | os.PathLike | None, max_train_samples: int | None = None,
              test: bool = True) -> TaskData:
    """Read every split a run needs; the train subsample is the same for every seed (drawn with seed 0)."""
    train = task.load("train", data_dir)
    if max_train_samples is not None and max_train_samples < len(train):
        keep = sorted(random.Random(0).sample(range(len(train)), max_train_samples))
        train = [train[i] for i in keep]
    if not train or any(e.label is None for e in train):
        missing = next((i for i, e in enumerate(train) if e.label is None), None)
        raise BortError(f"task {task.name}: the train set is empty" if missing is None else
                        f"task {task.name}: train row {missing + 1} has no label; fix the file")
    dev = {split: task.load(split, data_dir) for split in task.dev_splits if split in task.files}
    for split, rows in dev.items():
        if not rows or any(e.label is None for e in rows):
            raise BortError(f"task {task.name}: the {split} split is empty or has unlabelled rows")
    tests = {}
    for split in task.test_splits if test else ():
        with contextlib.suppress(BortError):  # test files are optional: no submission without them
            tests[split] = task.load(split, data_dir)
    return TaskData(task, train, dev, tests)


def write_submission(task: Task, split: str, examples: list[Example], predictions: np.ndarray, folder: Path) -> Path:
    """Test predictions in the leaderboard's format: GLUE `index\\tprediction` tsv, SuperGLUE jsonl."""
    path = folder / task.test_splits[split]
    labels = [_submitted(task, p) for p in predictions]
    if path.suffix == ".tsv":
        lines = ["index\tprediction"] + [f"{e.idx}\t{label}" for e, label in zip(examples, labels, strict=True)]
        return io.write_text(path, "\n".join(lines) + "\n")
    return io.write_text(path, "".join(json.dumps({"idx": _plain(e.idx), "label": label}) + "\n"
                                       for e, label in zip(examples, labels, strict=True)))


def _submitted(task: Task, prediction: Any) -> Any:
    if task.kind == "regression":
        return round(float(min(5.0, max(0.0, prediction))) if task.benchmark == "glue" else float(prediction), 3)
    if task.kind == "multiple_choice":
        return int(prediction)
    return task.from_index(prediction)


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def evaluate_folder(model: torch.nn.Module, tokenizer: Any, data: TaskData, config: FinetuneConfig,
                    folder: Path) -> dict[str, float]:
    """Score on the official dev split(s), write dev predictions and test submissions into `folder`."""
    task = data.task
    metrics, rows_out = dev_scores(model, tokenizer, data, config)
    io.rewrite_jsonl(folder / "dev_predictions.jsonl", rows_out)
    for split, rows in data.test.items():
        outputs = predict(model, tokenizer, task, rows, config.max_seq_len, config.eval_batch_size)
        write_submission(task, split, rows, decide(task, outputs), folder)
    return metrics


def summarise(runs: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Per-seed metrics with their mean and standard deviation."""
    mean, std = mean_std(list(runs.values()))
    return {"seeds": {str(k): v for k, v in runs.items()}, "mean": mean, "std": std}


def format_score(summary: dict[str, Any], metric: str) -> str:
    """'0.6534 ± 0.0121' for one metric of a summary."""
    return f"{summary['mean'][metric]:.4f} ± {summary['std'][metric]:.4f}"


def card_usage(task: Task) -> str:
    """The model card's "Use" section: how to load the folder with stock transformers."""
    head = "AutoModelForMultipleChoice" if task.kind == "multiple_choice" else "AutoModelForSequenceClassification"
    return (f"## Use\n```python\nfrom transformers import {head}, AutoTokenizer\n"
            f"model = {head}.from_pretrained(\"<this folder>\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"<this folder>\")\n```\n")


def finish_run(model: torch.nn.Module, tokenizer: Any, data: TaskData, config: FinetuneConfig, folder: Path,
               source: Any, steps: int, method: str, note: str = "") -> dict[str, float]:
    """Official-dev metrics, predictions, submissions and model card of one trained model; cached in metrics.json."""
    done = folder / "metrics.json"
    if done.is_file():
        return io.read_json(done)["metrics"]
    task = data.task
    metrics = evaluate_folder(model, tokenizer, data, config, folder)
    scores = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    body = (f"# {task.name} ({method} fine-tuning, seed {config.seed})\n\n"
            f"Fine-tuned by `bort finetune` from `{source}` on {task.benchmark} {task.name} ({task.kind}).\n"
            f"Train examples: {len(data.train)}; optimizer steps: {steps}; learning rate {config.lr}, batch size "
            f"{config.batch_size}, {config.epochs} epochs.\n{note}\n\n"
            f"## Official dev split\n| metric | value |\n|---|---|\n{scores}\n\n{card_usage(task)}")
    meta = {"library_name": "transformers", "tags": ["bort", method, task.benchmark], "datasets": [task.benchmark],
            "metrics": list(task.metrics), "bort": {"source": str(source), "task": task.name, "seed": config.seed,
                                                     "steps": steps, "dev": metrics}}
    io.write_model_card(folder, meta, body)
    io.write_json(done, {"task": task.name, "seed": config.seed, "steps": steps, "metrics": metrics})
    return metrics


def publish_best(out: Path, folders: dict[int, Path], runs: dict[int, dict[str, float]], metric: str) -> int:
    """Copy the best seed's model (by the official dev split's main metric) to the top of `out`, so the run
    folder itself loads with from_pretrained; the per-seed folders stay below it."""
    best = max(runs, key=lambda seed: (runs[seed][metric], -seed))
    io.copy_model(folders[best], out)
    return best


def latency_of(model: torch.nn.Module, tokenizer: Any, task: Task, seq_len: int = 128) -> dict[str, object]:
    """CPU latency of one example at batch 1 x seq_len (the models' speed, as DESIGN.md measures it)."""
    from bort.speed.latency import cpu_latency

    example = Example("hello " * seq_len, "world " * seq_len if task.kind != "multiple_choice" else None,
                      choices=("a", "b") if task.kind == "multiple_choice" else None)
    return cpu_latency(model, encode(tokenizer, task, [example], seq_len))


def task_tokenizer(source: str, max_seq_len: int) -> Any:
    """The model's tokenizer, once its config says inputs of `max_seq_len` tokens fit and its weights are whole:
    checked before any work."""
    io.check_weights(source)
    if hasattr(config := io.load_config(source), "max_position_embeddings") and max_seq_len > positions(config):
        raise BortError(f"--max-seq-len {max_seq_len} exceeds the {positions(config)} positions of {source}; use at "
                        f"most {positions(config)}")
    return io.load_tokenizer(source)


def fine_tuned_teacher(config: FinetuneConfig, task: Task, data: TaskData, out: Path, given: str | None,
                       start_from: str | None, role: str = "teacher") -> tuple[str | None, dict[str, float] | None]:
    """The teacher's folder: `given` as it is, or `start_from` fine-tuned here first on the whole train split (seed 0,
    plain, the run's settings) in `out/<role>`, with its official-dev scores."""
    if given or not start_from:
        return given, None
    folder, cfg = out / role, replace(config, seed=0, teacher=None, teacher_from=None, augment=0.0)
    tokenizer = io.load_tokenizer(start_from)
    net, steps = train(str(start_from), task, data.train, cfg, folder, resume=True, tokenizer=tokenizer)
    metrics = finish_run(net, tokenizer, data, cfg, folder, start_from, steps, role) if io.is_main() else None
    return str(folder), metrics


def teacher_score(teacher: Any, data: TaskData, config: FinetuneConfig) -> dict[str, float]:
    """A given teacher's (or labeller's) scores on the official dev split(s), reported beside the student's."""
    return dev_scores(teacher.model, teacher.tokenizer, data, config)[0]


def dev_scores(model: torch.nn.Module, tokenizer: Any, data: TaskData, config: FinetuneConfig
               ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The task's metrics on every official dev split (suffixed per split, e.g. _mm), and the predictions."""
    task, metrics, rows_out = data.task, {}, []
    for split, rows in data.dev.items():
        scores, preds = evaluate(model, tokenizer, task, rows, config)
        metrics.update({k + task.metric_suffix(split): v for k, v in scores.items()})
        rows_out += [{"split": split, "idx": _plain(e.idx), "label": e.label, "prediction": _submitted(task, p)}
                     for e, p in zip(rows, preds, strict=True)]
    return metrics, rows_out


def check_teacher(given: str | None, start_from: str | None, task: Task, max_seq_len: int, role: str = "teacher"):
    """A teacher for another label set, or damaged weights, fail before any work; returns the loaded teacher."""
    from bort.tasks.teacher import TaskTeacher

    if start_from:
        task_tokenizer(start_from, max_seq_len)  # its positions and weights
    return TaskTeacher(given, task, max_seq_len, role=role) if given else None


def hidden_teacher(teacher: Any, tokenizer: Any, config: FinetuneConfig) -> torch.nn.Module | None:
    """The teacher model whose hidden states the student learns (`--hidden-weight`), or None. The teacher reads the
    student's token ids, so the two must share a vocabulary; anything else is an error before any training."""
    if teacher is None or not config.hidden_weight:
        return None
    if teacher.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise BortError(f"--hidden-weight needs the teacher ({teacher.folder}) to share the student's vocabulary (its "
                        "states are matched token by token); pass --hidden-weight 0, or a teacher fine-tuned from the "
                        "student's source")
    return teacher.model


def generator(config: FinetuneConfig, source: str, tokenizer: Any) -> tuple[Any, Any] | None:
    """--augment's transform and similarity (None without it), built on every process before any work, so that a bad
    --infill-model is one line then and not a failure on process 0 after the teacher was trained."""
    if not config.augment:
        return None
    from bort.agora.transforms import Similarity, load_encoder, make_transform

    if config.infill_model:
        io.check_weights(config.infill_model)
    encoder = load_encoder(source)
    return (make_transform(config.transform, encoder, tokenizer, config.replace_fraction, config.infill_model),
            Similarity(encoder, tokenizer, config.max_seq_len))


def augmented(config: FinetuneConfig, made_by: tuple[Any, Any], teacher: Any, train: list[Example],
              soft: np.ndarray, out: Path) -> tuple[list[Example], np.ndarray]:
    """TinyBERT's data augmentation: `config.augment` x the train set in new points, each made by `config.transform`
    from a random train point (within `config.band`) and labelled by the teacher's outputs; the train set plus them,
    with their soft targets. Made once in <output>/augmented.jsonl (the same for every seed) and reused on resume;
    augmented.json, written after it, records how, so a resumed run with other settings is refused."""
    from bort.agora.transforms import grow, label_points, uniform_points

    path, made, wanted = out / "augmented.jsonl", out / "augmented.json", round(config.augment * len(train))
    how = {"augment": config.augment, "n_train": len(train), "teacher": config.teacher or config.teacher_from,
           **{k: getattr(config, k) for k in GENERATION_OPTIONS}}
    if made.is_file():
        io.same_settings(io.read_json(made), how, f"the augmented points in {out}")
    elif io.is_main():
        # one new point per draw: the sources spread over the whole train set
        rows = uniform_points(train, wanted, 0, *made_by, config.band, 1, config.progress)
        if len(rows) < wanted:
            log.warning("--augment %g: %d new points, not %d; the transform's candidates fell outside --band %g %g",
                        config.augment, len(rows), wanted, *config.band)
        label_points(teacher, rows, soft=True)
        io.rewrite_jsonl(path, rows)
        io.write_json(made, io.strict_json(how))
    io.barrier()  # every process reads what process 0 wrote
    rows = io.read_jsonl(path)
    return grow(train, soft, rows)


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune `config.model` on `config.task` once per seed; official-dev metrics per seed and mean ± std. Writes
    `<output>/plain/seed-<s>/` (`distilled/` with a teacher: a stock model folder with card, metrics, dev predictions
    and test submission files), the teacher in `<output>/teacher/` with `teacher_from`, the best seed's model at
    `<output>/`, and `<output>/metrics.json`."""
    if config.augment and not (config.teacher or config.teacher_from):
        raise BortError("--augment needs a teacher to label the new points: add --teacher DIR (fine-tuned on the "
                        "task) or --teacher-from MODEL")
    source = str(config.model) if config.model else io.default_source()
    spec = resolve_task(config.task, **config.task_files())
    data = load_data(spec, config.data_dir, config.max_train_samples)
    tokenizer = task_tokenizer(source, config.max_seq_len)
    teacher = check_teacher(config.teacher, config.teacher_from, spec, config.max_seq_len)
    hidden_teacher(teacher, tokenizer, config)  # a given teacher with another vocabulary fails before any work
    made_by = generator(config, source, tokenizer)
    inputs = (config.model, config.data_dir, config.train_file, config.dev_file, config.test_file, config.teacher,
              config.teacher_from, config.infill_model)
    out = io.prepare_output(config.output, "finetune", config.resume, config.overwrite, inputs)
    teacher_dir, teacher_dev = fine_tuned_teacher(config, spec, data, out, config.teacher, config.teacher_from)
    soft = None
    if teacher_dir is not None:  # the teacher's outputs for every train point, once, shared by every seed
        from bort.tasks.teacher import TaskTeacher

        teacher = teacher or TaskTeacher(teacher_dir, spec, config.max_seq_len)
        soft = teacher.outputs(data.train)
        if teacher_dev is None and io.is_main():
            teacher_dev = teacher_score(teacher, data, config)
    train_rows = data.train
    if config.augment:  # the new points and the teacher's outputs for them, once, shared by every seed
        train_rows, soft = augmented(config, made_by, teacher, data.train, soft, out)
    method = "distilled" if soft is not None else "plain"
    hidden = hidden_teacher(teacher, tokenizer, config) if soft is not None else None  # once, shared by every seed
    weight = f", hidden-state weight {config.hidden_weight}" if config.hidden_weight else ""
    extra = f"; {len(train_rows) - len(data.train)} augmented points" if config.augment else ""
    note = f"Task distillation from `{teacher_dir}` (alpha {config.alpha}, T {config.temperature}{weight}{extra})." \
        if soft is not None else ""
    runs, folders, first = {}, {}, None
    for seed in config.seeds:
        cfg = replace(config, seed=seed)
        folders[seed] = out / method / f"seed-{seed}"
        net, steps = train(source, spec, train_rows, cfg, folders[seed], resume=config.resume, tokenizer=tokenizer,
                           soft=soft, teacher=hidden)
        if io.is_main():
            runs[seed] = finish_run(net, tokenizer, data, cfg, folders[seed], source, steps, method, note)
        first = first or net
    if not io.is_main():
        return {}
    result = {"task": spec.name, "benchmark": spec.benchmark, "metrics": list(spec.metrics), "model": source,
              "n_train": len(data.train), method: summarise(runs),
              "best_seed": publish_best(out, folders, runs, spec.metrics[0])}
    if teacher_dir is not None:
        result.update(teacher=teacher_dir, teacher_dev=teacher_dev, alpha=config.alpha, temperature=config.temperature,
                      hidden_weight=config.hidden_weight)
    if config.augment:
        result.update(augment=config.augment, n_augmented=len(train_rows) - len(data.train))
    if config.measure_latency and first is not None:
        result.update(latency_of(first, tokenizer, spec))
    io.write_json(out / "metrics.json", result)
    return result
