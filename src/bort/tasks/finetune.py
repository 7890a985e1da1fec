"""The one fine-tuning loop (plain fine-tuning and every Agora round use it) and `bort finetune`'s outputs.

The loop runs through `accelerate` (CPU, one GPU, or DDP under `accelerate launch`/`torchrun`). Each process
takes a fixed slice of every global batch, and the batch order is a function of (seed, epoch), so a run that
resumes from a checkpoint continues exactly where it stopped. A finished run is a stock `save_pretrained`
folder that loads with AutoModelForSequenceClassification (or AutoModelForMultipleChoice for COPA).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    get_linear_schedule_with_warmup,
    set_seed,
)

from bort.distill.teacher import load_tokenizer
from bort.errors import BortError
from bort.families.bert import default_source, load_config
from bort.tasks.generic import file_task
from bort.tasks.metrics import compute, mean_std
from bort.tasks.registry import Example, Task, get_task

DONE = "train_state.json"  # written last: its presence means the folder holds a finished model
CHECKPOINT = "checkpoint"


@dataclass
class FinetuneConfig:
    """Hyperparameters of one fine-tuning run (one member of Agora's Θ)."""

    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 32  # per process
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of the steps when < 1, else steps
    max_seq_len: int = 128
    seed: int = 0
    max_steps: int | None = None  # overrides epochs (used to match gradient steps across methods)
    save_every: int = 100
    eval_batch_size: int = 64
    mixed_precision: str = "auto"

    def total_steps(self, n_train: int, world: int = 1) -> int:
        """Optimizer steps of the run: max_steps, or epochs over batches of batch_size x processes."""
        if self.max_steps:
            return int(self.max_steps)
        return max(1, math.ceil(self.epochs * math.ceil(n_train / (self.batch_size * world))))

    def check(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or self.epochs <= 0 or self.max_seq_len < 8:
            raise BortError("--batch-size must be >= 1, --lr and --epochs > 0, --max-seq-len >= 8")


_ACCELERATOR = None


def accelerator(config: FinetuneConfig):
    """One Accelerator per process (accelerate's state is a singleton), set up by the distill trainer's rules."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from bort.distill.trainer import make_accelerator

        _ACCELERATOR = make_accelerator(config)  # type: ignore[arg-type] - it reads .mixed_precision only
    return _ACCELERATOR


def load_task_model(source: str | os.PathLike, task: Task) -> torch.nn.Module:
    """The source encoder with a fresh task head (or a fine-tuned folder as it is), offline-friendly."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a fresh head is the point here, not news
    try:
        return _load_task_model(source, task)
    finally:
        hf_logging.set_verbosity(level)


def _load_task_model(source: str | os.PathLike, task: Task) -> torch.nn.Module:
    config = load_config(source)
    if task.kind == "multiple_choice":
        return AutoModelForMultipleChoice.from_pretrained(str(source), config=config)
    config.num_labels = task.num_labels
    if task.kind == "classification":
        config.id2label = dict(enumerate(task.labels))
        config.label2id = {label: i for i, label in enumerate(task.labels)}
    config.problem_type = "regression" if task.kind == "regression" else "single_label_classification"
    try:
        return AutoModelForSequenceClassification.from_pretrained(str(source), config=config,
                                                                  ignore_mismatched_sizes=True)
    except (OSError, ValueError) as exc:
        raise BortError(f"cannot load model weights from '{source}' ({type(exc).__name__}); pass a model folder "
                        "with config.json and model.safetensors") from None


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


def is_main() -> bool:
    """Whether this is the process that writes results (rank 0 under torchrun/accelerate launch)."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every process (after rank 0 wrote files the others read); a no-op in one process."""
    if _ACCELERATOR is not None:
        _ACCELERATOR.wait_for_everyone()


def _after_step(step: int) -> None:
    """Called after every optimizer step; tests replace it to simulate a crash."""


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    from bort.distill.trainer import _param_groups as groups

    return groups(model, weight_decay)


def _fingerprint(source: Any, task: Task, n_train: int, config: FinetuneConfig, world: int) -> dict[str, Any]:
    out = {k: v for k, v in asdict(config).items() if k not in ("save_every", "eval_batch_size")}
    return json.loads(json.dumps({**out, "source": str(source), "task": task.name, "n_train": n_train,
                                  "world": world}))


def train(source: str | os.PathLike, task: Task, examples: list[Example], config: FinetuneConfig,
          folder: str | os.PathLike, resume: bool = False, progress: bool = True,
          tokenizer: Any = None) -> tuple[torch.nn.Module, int]:
    """Fine-tune `source` on `examples`; save a stock folder in `folder`. Returns (model, optimizer steps).

    A folder that already holds a finished run is loaded, not retrained; with `resume`, a checkpoint
    left by a crash is continued (same data order, optimizer and scheduler state, RNG).
    """
    from tqdm.auto import tqdm

    if not examples:
        raise BortError(f"task {task.name}: the train set is empty")
    folder = Path(folder)
    tokenizer = tokenizer or load_tokenizer(source)
    if (folder / DONE).is_file():
        return load_task_model(folder, task), json.loads((folder / DONE).read_text())["steps"]
    acc = accelerator(config)
    world, rank, per = acc.num_processes, acc.process_index, config.batch_size
    n, global_batch = len(examples), config.batch_size * acc.num_processes
    per_epoch = math.ceil(n / global_batch)
    total = config.total_steps(n, world)
    warmup = int(config.warmup * total) if config.warmup < 1 else int(config.warmup)
    set_seed(config.seed)
    model = load_task_model(source, task)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
    model, optimizer = acc.prepare(model, optimizer)
    fingerprint = _fingerprint(source, task, n, config, world)
    step, state_path = 0, folder / CHECKPOINT / "state.pt"
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise BortError(f"checkpoint in {folder} was made with other settings; rerun without --resume "
                            "(or with --overwrite) to start again")
        acc.unwrap_model(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
    device = acc.device
    model.train()
    bar = tqdm(total=total, initial=step, desc=f"fine-tune {task.name} seed {config.seed}", unit="step",
               disable=not (progress and acc.is_main_process), leave=False)
    order, order_epoch = None, -1
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        if epoch != order_epoch:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch)).tolist()
            order_epoch = epoch
        start = offset * global_batch + rank * per
        batch_examples = [examples[order[(start + j) % n]] for j in range(per)]
        batch = {k: v.to(device) for k, v in encode(tokenizer, task, batch_examples, config.max_seq_len).items()}
        loss = model(**batch, labels=targets(task, batch_examples).to(device)).loss
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        _after_step(step)
        if step % config.save_every == 0 and step < total and acc.is_main_process:
            _save_checkpoint(folder, {"model": acc.unwrap_model(model).state_dict(), "step": step,
                                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                      "rng": torch.get_rng_state(), "fingerprint": fingerprint})
    bar.close()
    model = acc.unwrap_model(model)
    if acc.is_main_process:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / DONE).write_text(json.dumps({"steps": total, "n_train": n, "config": asdict(config)}, indent=1))
        shutil.rmtree(folder / CHECKPOINT, ignore_errors=True)
    acc.wait_for_everyone()
    acc.free_memory()
    return model.eval(), total


def _save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write beside, then rename: a crash mid-write keeps the previous checkpoint whole."""
    tmp = folder / f".{CHECKPOINT}-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(folder / CHECKPOINT, ignore_errors=True)
    os.replace(tmp, folder / CHECKPOINT)


# -- data --------------------------------------------------------------------------------------------------
@dataclass
class TaskData:
    """The splits one run uses: train, the official dev split(s), and the unlabelled test split(s)."""

    task: Task
    train: list[Example]
    dev: dict[str, list[Example]]
    test: dict[str, list[Example]]


def resolve_task(task: str | Task, train_file: str | None = None, dev_file: str | None = None,
                 test_file: str | None = None, **columns: Any) -> Task:
    """A registered task, or a custom one when files are given (--train/--dev/--test)."""
    if train_file:
        return file_task(train_file, dev_file, test_file, name=str(task or "custom"), **columns)
    return get_task(task)


def load_data(task: Task, data_dir: str | os.PathLike | None, max_train_samples: int | None = None,
              test: bool = True) -> TaskData:
    """Read every split a run needs; the train subsample is the same for every seed (drawn with seed 0)."""
    import random

    train = task.load("train", data_dir)
    if max_train_samples is not None and max_train_samples < len(train):
        keep = sorted(random.Random(0).sample(range(len(train)), max_train_samples))
        train = [train[i] for i in keep]
    if not train or all(e.label is None for e in train):
        raise BortError(f"task {task.name}: the train set is empty (or unlabelled)")
    dev = {split: task.load(split, data_dir) for split in task.dev_splits if split in task.files}
    for split, rows in dev.items():
        if not rows or any(e.label is None for e in rows):
            raise BortError(f"task {task.name}: the {split} split is empty or has unlabelled rows")
    tests = {}
    if test:
        for split in task.test_splits:
            try:
                tests[split] = task.load(split, data_dir)
            except BortError:
                continue  # test files are optional: no submission without them
    return TaskData(task, train, dev, tests)


# -- outputs -----------------------------------------------------------------------------------------------
def write_submission(task: Task, split: str, examples: list[Example], predictions: np.ndarray,
                     folder: Path) -> Path:
    """Test predictions in the leaderboard's format: GLUE `index\\tprediction` tsv, SuperGLUE jsonl."""
    path = folder / task.test_splits[split]
    labels = [_submitted(task, p) for p in predictions]
    if path.suffix == ".tsv":
        lines = ["index\tprediction"] + [f"{e.idx}\t{label}" for e, label in zip(examples, labels, strict=True)]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("".join(json.dumps({"idx": _plain(e.idx), "label": label}) + "\n"
                                for e, label in zip(examples, labels, strict=True)))
    return path


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
    task, metrics = data.task, {}
    with open(folder / "dev_predictions.jsonl", "w") as f:
        for split, rows in data.dev.items():
            scores, preds = evaluate(model, tokenizer, task, rows, config)
            metrics.update({k + task.metric_suffix(split): v for k, v in scores.items()})
            for e, p in zip(rows, preds, strict=True):
                f.write(json.dumps({"split": split, "idx": _plain(e.idx), "label": e.label,
                                    "prediction": _submitted(task, p)}) + "\n")
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


def model_card(info: dict[str, Any]) -> str:
    """README.md of a fine-tuned folder: what it is, how it was trained and what it scored (official dev)."""
    task: Task = info["task"]
    head = {"classification": "AutoModelForSequenceClassification", "regression":
            "AutoModelForSequenceClassification", "multiple_choice": "AutoModelForMultipleChoice"}[task.kind]
    scores = "\n".join(f"| {k} | {v:.4f} |" for k, v in info["metrics"].items())
    return f"""---
library_name: transformers
base_model: {info['source']}
tags: [bort, {info['method']}, {task.benchmark}]
datasets: [{task.benchmark}]
metrics: [{', '.join(task.metrics)}]
---
# {task.name} ({info['method']} fine-tuning, seed {info['seed']})

Fine-tuned by `bort finetune` from `{info['source']}` on {task.benchmark} {task.name} ({task.kind}).
Train examples: {info['n_train']}; optimizer steps: {info['steps']}; hyperparameters: `{json.dumps(info['config'])}`.
{info.get('note', '')}

## Official dev split
| metric | value |
|---|---|
{scores}

## Use
```python
from transformers import {head}, AutoTokenizer
model = {head}.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```
"""


def finish_run(model: torch.nn.Module, tokenizer: Any, data: TaskData, config: FinetuneConfig, folder: Path,
               source: Any, steps: int, method: str, note: str = "") -> dict[str, float]:
    """Official-dev metrics, predictions, submissions and card of one trained model; cached in metrics.json."""
    done = folder / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())["metrics"]
    metrics = evaluate_folder(model, tokenizer, data, config, folder)
    info = {"task": data.task, "source": str(source), "method": method, "seed": config.seed, "steps": steps,
            "n_train": len(data.train), "config": asdict(config), "metrics": metrics, "note": note}
    (folder / "README.md").write_text(model_card(info))
    done.write_text(json.dumps({"task": data.task.name, "seed": config.seed, "steps": steps, "metrics": metrics},
                               indent=1))
    return metrics


def prepare_output(output: str | os.PathLike, resume: bool, overwrite: bool) -> Path:
    """An empty (or resumable) output folder; never silently mixes two runs."""
    out = Path(output).expanduser()
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise BortError(f"output {out} is not empty; pass --resume to continue that run or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def cpu_latency_ms(model: torch.nn.Module, tokenizer: Any, task: Task, seq_len: int = 128) -> float:
    """Median CPU latency of one example at batch 1 x seq_len (the models' speed, as DESIGN.md measures it)."""
    import copy

    from bort.speed.latency import measure_model

    example = Example("hello " * seq_len, "world " * seq_len if task.kind != "multiple_choice" else None,
                      choices=("a", "b") if task.kind == "multiple_choice" else None)
    inputs = encode(tokenizer, task, [example], seq_len)
    return round(measure_model(copy.deepcopy(model).cpu(), inputs, repeats=10, warmup=3), 3)


def finetune(model: str | os.PathLike | None, task: str | Task, output: str | os.PathLike,
             data_dir: str | os.PathLike | None = None, seeds: list[int] | tuple[int, ...] = (0,),
             epochs: float = 3.0, lr: float = 5e-5, batch_size: int = 32, weight_decay: float = 0.01,
             warmup: float = 0.1, max_seq_len: int = 128, max_train_samples: int | None = None,
             max_steps: int | None = None, resume: bool = False, overwrite: bool = False,
             save_every: int = 100, measure_latency: bool = True, progress: bool = True,
             **custom: Any) -> dict[str, Any]:
    """Fine-tune `model` on `task` once per seed; report official-dev metrics per seed and mean ± std.

    Writes `<output>/plain/seed-<s>/` (a stock model folder with card, metrics, dev predictions and test
    submission files) and `<output>/metrics.json`. Custom tasks: pass train_file/dev_file/test_file and
    text_column/pair_column/label_column/kind. Returns what metrics.json holds.
    """
    source = str(model) if model else default_source()
    spec = resolve_task(task, **custom)
    config = FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, warmup=warmup,
                            max_seq_len=max_seq_len, max_steps=max_steps, save_every=save_every)
    config.check()
    data = load_data(spec, data_dir, max_train_samples)
    out = prepare_output(output, resume, overwrite)
    tokenizer = load_tokenizer(source)
    runs, first = {}, None
    for seed in seeds:
        cfg = replace(config, seed=seed)
        folder = out / "plain" / f"seed-{seed}"
        net, steps = train(source, spec, data.train, cfg, folder, resume=resume, progress=progress,
                           tokenizer=tokenizer)
        if is_main():
            runs[seed] = finish_run(net, tokenizer, data, cfg, folder, source, steps, "plain")
        first = first or net
    if not is_main():
        return {}
    result = {"task": spec.name, "benchmark": spec.benchmark, "metrics": list(spec.metrics), "model": source,
              "n_train": len(data.train), "plain": summarise(runs)}
    if measure_latency and first is not None:
        result["cpu_latency_ms"] = cpu_latency_ms(first, tokenizer, spec)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result
