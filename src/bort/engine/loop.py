"""The one training loop, on accelerate: a CPU, a GPU (mixed precision) or many processes (DDP).

It trains an *objective* (a module that returns named loss terms, with an optional teacher in the loop) on
a *batch source* (a pure function of the step), and owns every policy of training: AdamW with no decay on
biases and LayerNorm weights, linear warm-up and decay, gradient accumulation and clipping, mixed precision,
a non-finite loss (stop before the update, keep the last good checkpoint), checkpoints and resume.

Determinism is by construction rather than by saved RNG state: the rows of step s come from the batch
source as a function of s, and before each micro-step the RNG of every device is seeded from (seed, step,
micro-step, process), which fixes dropout on CPU and GPU alike. So a checkpoint holds only weights,
optimizer and schedule, and `resume` replays the uninterrupted trajectory exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from bort import io
from bort.config import TrainConfig
from bort.errors import BortError, NonFiniteLoss

Batch = dict[str, Any]


class BatchSource(Protocol):
    def batch(self, step: int, micro: int, rank: int, world: int) -> Batch:
        """The rows of one micro-step of one process: a pure function of its arguments."""


@dataclass
class TrainResult:
    steps: int
    train: dict[str, float]  # the last step's loss terms (mean over processes)
    eval: dict[str, float]  # the last held-out evaluation
    seconds: float
    tokens_per_s: float | None  # training steps only, the first (warm-up) step excluded


def make_accelerator(mixed_precision: str = "auto", find_unused: bool = False):
    """One Accelerator per run; CPU runs stay in fp32 (mixed precision there is slower and less exact)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    gpu = torch.cuda.is_available()
    auto = "bf16" if gpu and torch.cuda.is_bf16_supported() else "fp16"
    precision = (auto if mixed_precision == "auto" else mixed_precision) if gpu else "no"
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()  # accelerate keeps one precision per process; this run asks for another
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=find_unused)]
    return Accelerator(mixed_precision=precision, kwargs_handlers=kwargs, cpu=not gpu)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (BERT's convention)."""
    decay, plain = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (plain if p.dim() < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class Engine:
    """Trains `objective` on `batches` for `config.max_steps` optimizer steps.

    With `output`, it logs to output/metrics.jsonl and checkpoints to output/checkpoints (refusing to resume from one
    whose `fingerprint` differs). `local=True` trains in this process only, even under a launcher (the search gives
    each process its own arms; inside `io.alone_on_main`, process 0 trains by itself). `eval_batches(rank, world)`
    yields held-out batches."""

    def __init__(self, objective: nn.Module, batches: BatchSource, config: TrainConfig, output: Path | None = None,
                 fingerprint: dict[str, Any] | None = None,
                 eval_batches: Callable[[int, int], Iterable[Batch]] | None = None, local: bool = False,
                 desc: str = "train", progress: bool = True):
        self.objective, self.batches, self.config = objective, batches, config
        self.output, self.eval_batches, self.local = output, eval_batches, local or io.alone()
        self.fingerprint, self.desc, self.progress, self.acc = io.strict_json(fingerprint or {}), desc, progress, None

    @property
    def checkpoint_dir(self) -> Path | None:
        return None if self.output is None else self.output / "checkpoints"

    def _where(self) -> tuple[int, int]:
        return (0, 1) if self.local else (self.acc.process_index, self.acc.num_processes)

    def _main(self) -> bool:
        return self.output is not None and self.acc.is_main_process

    def _to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.acc.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _reduce(self, values: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return values if self.local else self.acc.reduce(values, reduction=reduction)

    def _resume(self, resume: bool, optimizer, scheduler) -> int:
        found = io.checkpoints(self.checkpoint_dir) if self.output is not None else []
        if found and not resume:
            raise BortError(f"{self.output} already holds checkpoints of a run; pass --resume to continue it")
        if not found:
            return 0
        io.same_settings(io.read_json(found[-1] / "state.json").get("fingerprint", {}), self.fingerprint,
                         f"checkpoint {found[-1]}")
        state = io.load_checkpoint(found[-1], self.objective, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        self._scaler_state, self._last = state.get("scaler"), (state.get("train", {}), state.get("eval", {}))
        return int(state["step"])

    def _save(self, step: int, optimizer, scheduler, train: dict, last_eval: dict) -> None:
        if not self.local:  # a local run has no one to wait for
            io.barrier()
        if self._main():
            scaler = self.acc.scaler.state_dict() if self.acc.scaler is not None else None
            io.save_checkpoint(self.checkpoint_dir, step, self.objective, optimizer,
                               {"fingerprint": self.fingerprint, "scheduler": scheduler.state_dict(), "scaler": scaler,
                                "train": train, "eval": last_eval})
        if not self.local:
            io.barrier()

    def _log(self, record: dict[str, Any]) -> None:
        if self._main():
            io.append_jsonl(self.output / "metrics.jsonl", record)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss terms over the held-out batches (each process scores its share)."""
        if self.eval_batches is None:
            return {}
        if self.acc is None:
            self.acc = make_accelerator(self.config.mixed_precision)
        model = self.objective
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros((), device=self.acc.device)
        for batch in self.eval_batches(*self._where()):
            batch = self._to_device(batch)
            with self.acc.autocast():
                terms = model(batch, model.targets(batch))
            rows = len(next(v for v in batch.values() if isinstance(v, torch.Tensor)))
            for key, value in terms.items():
                sums[key] = sums.get(key, 0) + value.detach().float() * rows
            count += rows
        model.train()
        if not (keys := sorted(sums)):
            return {}
        totals = self._reduce(torch.stack([sums[k] for k in keys] + [count]), "sum")
        return {k: float(v / totals[-1]) for k, v in zip(keys, totals[:-1], strict=True)}

    def run(self, resume: bool = False, on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
        """Train to `max_steps` (from the last checkpoint with `resume`). `on_step(step, terms)` is called after
        every optimizer step (tests use it to interrupt a run)."""
        config, objective = self.config, self.objective
        self.acc = acc = make_accelerator(config.mixed_precision, getattr(objective, "find_unused_parameters", False))
        total = config.max_steps
        # the fused kernel updates every parameter in one pass instead of a loop of small ops per tensor
        optimizer = torch.optim.AdamW(param_groups(objective, config.weight_decay), lr=config.lr,
                                      fused=acc.device.type in ("cpu", "cuda"))
        scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps(total), total)
        self._scaler_state, self._last = None, ({}, {})
        start = self._resume(resume, optimizer, scheduler)
        model, optimizer = ((acc.prepare_model(objective, evaluation_mode=True), acc.prepare_optimizer(optimizer))
                            if self.local else acc.prepare(objective, optimizer))
        if acc.scaler is not None and self._scaler_state:
            acc.scaler.load_state_dict(self._scaler_state)
        if getattr(objective, "teacher", None) is not None:
            objective.teacher.to(acc.device)
        if self._main():  # keep only the records up to the resumed step, so the log reads as one uninterrupted run
            path = self.output / "metrics.jsonl"
            io.rewrite_jsonl(path, [r for r in io.read_jsonl(path) if start and r.get("step", 0) <= start])
        rank, world = self._where()
        bar = io.progress_bar(total, self.desc, self.progress and acc.is_main_process, initial=start, unit="step")
        if config.eval_every and start == 0 and self.eval_batches is not None:
            self._log({"kind": "eval", "step": 0, **self.evaluate()})
        began, train_seconds, tokens = time.perf_counter(), 0.0, 0
        terms_out, last_eval = self._last  # a run resumed at its end reports what it ended with
        model.train()
        with bar:
            for step in range(start, total):
                tick, step_tokens = time.perf_counter(), 0
                sums: dict[str, torch.Tensor] = {}
                for micro in range(config.grad_accum):
                    torch.manual_seed((config.seed * 1_000_003 + step * 1009 + micro * 31 + rank) % 2**62)
                    batch = self._to_device(self.batches.batch(step, micro, rank, world))
                    if "input_ids" in batch:
                        step_tokens += batch["input_ids"].numel() * (1 if self.local else world)
                    last = micro == config.grad_accum - 1
                    with contextlib.nullcontext() if last or self.local else acc.no_sync(model), acc.autocast():
                        terms = model(batch, objective.targets(batch))
                        acc.backward(terms["loss"] / config.grad_accum)
                    for key, value in terms.items():
                        sums[key] = sums.get(key, 0) + value.detach().float() / config.grad_accum
                keys = sorted(sums)
                means = dict(zip(keys, self._reduce(torch.stack([sums[k] for k in keys])).tolist(), strict=True))
                if not math.isfinite(means["loss"]):
                    raise self._diverged(means["loss"], step + 1)
                norm = acc.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                if acc.scaler is None and not math.isfinite(float(norm)):  # fp16's scaler skips such steps itself
                    raise self._diverged(float(norm), step + 1, "gradient norm")
                optimizer.step()
                if not optimizer.step_was_skipped:  # fp16: no update, so the schedule does not advance either
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                done, seconds = step + 1, time.perf_counter() - tick
                if step > start:  # the first step of a run pays one-off warm-up costs
                    train_seconds, tokens = train_seconds + seconds, tokens + step_tokens
                terms_out = {k: round(v, 6) for k, v in means.items()}
                if done % config.log_every == 0 or done == total:
                    self._log({"kind": "train", "step": done, **terms_out, "lr": scheduler.get_last_lr()[0],
                               "tokens_per_s": round(step_tokens / seconds, 1),
                               "elapsed_s": round(time.perf_counter() - began, 2)})
                bar.set_postfix_str(" ".join(f"{k} {v:.4f}" for k, v in terms_out.items() if k in (
                    "loss", "mlm", "kd", "hidden", "attention")) + f" | {step_tokens / seconds:,.0f} tok/s",
                    refresh=False)
                bar.update(1)
                if config.eval_every and (done % config.eval_every == 0 or done == total):
                    last_eval = self.evaluate()
                    self._log({"kind": "eval", "step": done, **last_eval})
                if self.output is not None and ((config.save_every and done % config.save_every == 0) or done == total):
                    self._save(done, optimizer, scheduler, terms_out, last_eval)
                if on_step is not None:
                    on_step(done, terms_out)
        return TrainResult(steps=total, train=terms_out, eval=last_eval, seconds=round(time.perf_counter() - began, 2),
                           tokens_per_s=round(tokens / train_seconds, 1) if train_seconds else None)

    def _diverged(self, value: float, step: int, what: str = "loss") -> NonFiniteLoss:
        kept = io.checkpoints(self.checkpoint_dir) if self.output is not None else []
        where = f" (the last good checkpoint, {kept[-1].name}, is kept)" if kept else ""
        return NonFiniteLoss(f"the {what} became non-finite ({value}) at step {step}; stopped before the update"
                             f"{where}; start again (--overwrite) with a lower --lr or a longer --warmup, or without "
                             "mixed precision: resuming would diverge the same way")
