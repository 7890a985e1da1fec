"""The pre-training loop: one `accelerate` loop for a CPU, a GPU (mixed precision) or many processes (DDP).

Determinism is by construction rather than by saved RNG state: the rows of optimizer step s are a pure
function of (seed, s) — a seeded permutation per epoch over the training rows, sliced into global
batches — and each row's mask and each micro-step's dropout are seeded from the row's global index
and the step. So `--resume` replays the same trajectory from a checkpoint that holds only weights,
optimizer and schedule, and the data a step sees does not depend on how many processes share it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import get_linear_schedule_with_warmup

from bort.distill.data import mask_tokens
from bort.distill.losses import attention_relation_distillation, hidden_distillation, logit_distillation
from bort.distill.objective import DistillationObjective
from bort.distill.teacher import Teacher
from bort.errors import BortError

CHECKPOINT_PREFIX = "checkpoint-"
KEEP_CHECKPOINTS = 2


@dataclass
class TrainConfig:
    """Everything that shapes the optimisation; also the fingerprint a resumed run must match."""

    max_steps: int = 1000
    batch_size: int = 32  # rows per process per micro-step
    grad_accum: int = 1
    lr: float = 5e-4
    warmup: float = 0.06  # a fraction of max_steps when < 1, else a number of steps
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    mask_prob: float = 0.15
    temperature: float = 2.0
    mlm_weight: float = 0.1
    kd_weight: float = 0.5
    hidden_weight: float = 1.0
    hidden_loss: str = "mse"
    attention_weight: float = 0.0
    seed: int = 0
    eval_every: int = 100
    save_every: int = 500
    log_every: int = 10
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU); "auto" picks bf16/fp16 on a GPU
    extra: dict = field(default_factory=dict)  # run identity (arch, teacher, corpus) for the fingerprint

    def warmup_steps(self) -> int:
        return int(self.warmup) if self.warmup >= 1 else math.ceil(self.warmup * self.max_steps)


def _mlm_head(model: nn.Module) -> nn.Module:
    for name in ("cls", "lm_head"):
        if hasattr(model, name):
            return getattr(model, name)
    raise BortError(f"{type(model).__name__} has no masked-LM head (cls or lm_head)")


def _last_attention(model: nn.Module) -> nn.Module:
    return model.base_model.encoder.layer[-1].attention.self


@contextlib.contextmanager
def capture_qkv(model: nn.Module):
    """Collect the last layer's query, key and value projections ([batch, seq, width]) during a forward."""
    attention = _last_attention(model)
    found: list[torch.Tensor] = []
    handles = [getattr(attention, n).register_forward_hook(lambda _m, _i, out: found.append(out))
               for n in ("query", "key", "value")]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


class PretrainObjective(DistillationObjective):
    """The shared objective, for an MLM-shaped student (so the output loads with AutoModelForMaskedLM).

    Logits are only computed at masked positions (15% of the vocabulary-sized work). With a
    hidden-state teacher the loss is hidden_weight · hidden + mlm_weight · masked-LM cross-entropy, so
    the saved MLM head is trained too; with an MLM teacher it is Bort's recipe. Attention relations
    (MiniLMv2) are added with weight `attention_weight` for either teacher.
    """

    def __init__(self, student: nn.Module, teacher: Teacher, config: TrainConfig):
        super().__init__(student, teacher, hidden_loss=config.hidden_loss, temperature=config.temperature,
                         mlm_weight=config.mlm_weight, kd_weight=config.kd_weight)
        self.hidden_weight, self.attention_weight = config.hidden_weight, config.attention_weight
        teacher_heads = teacher.model.config.num_attention_heads
        self.relation_heads = math.gcd(teacher_heads, student.config.hidden_size)

    @torch.no_grad()
    def targets(self, teacher: Teacher, input_ids: torch.Tensor, labels: torch.Tensor) -> dict:
        """Teacher logits at masked positions, or its last hidden state; plus Q, K, V when needed."""
        with capture_qkv(teacher.model) if self.attention_weight else contextlib.nullcontext([]) as qkv:
            hidden = teacher.model.base_model(input_ids=input_ids).last_hidden_state
        main = _mlm_head(teacher.model)(hidden[labels != -100]) if teacher.has_mlm_head else hidden
        return {"main": main, "qkv": tuple(qkv)}

    def forward(self, input_ids: torch.Tensor, targets: dict, labels: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        masked = labels != -100
        with capture_qkv(self.student) if self.attention_weight else contextlib.nullcontext([]) as qkv:
            hidden = self.student.base_model(input_ids=input_ids).last_hidden_state
        need_logits = self.uses_logits or self.mlm_weight > 0
        logits = _mlm_head(self.student)(hidden[masked]) if need_logits else None
        if self.uses_logits:
            terms = logit_distillation(logits, targets["main"], labels[masked], self.temperature,
                                       self.mlm_weight, self.kd_weight)
            terms["teacher_accuracy"] = (targets["main"].argmax(-1) == labels[masked]).float().mean()
            terms["agreement"] = (logits.argmax(-1) == targets["main"].argmax(-1)).float().mean().detach()
        else:
            projected = self.projection(hidden)
            terms = hidden_distillation(projected, targets["main"], self.hidden_loss)
            terms["loss"] = self.hidden_weight * terms["hidden"]
            cosine = F.cosine_similarity(projected.float(), targets["main"].float(), dim=-1)
            terms["cosine"] = cosine.mean().detach()
            if logits is not None:
                terms["mlm"] = F.cross_entropy(logits.float(), labels[masked])
                terms["loss"] = terms["loss"] + self.mlm_weight * terms["mlm"]
        if logits is not None:
            terms["accuracy"] = (logits.argmax(-1) == labels[masked]).float().mean().detach()
        if self.attention_weight:
            terms["attention"] = attention_relation_distillation(tuple(qkv), targets["qkv"],
                                                                 self.relation_heads)["attention"]
            terms["loss"] = terms["loss"] + self.attention_weight * terms["attention"]
        return terms


class BatchPlan:
    """Which rows, with which masks, each micro-step of each process sees: a pure function of the step."""

    def __init__(self, rows, tokenizer, config: TrainConfig, eval_rows: int, world: int):
        self.rows, self.tokenizer, self.config, self.world = rows, tokenizer, config, world
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(config.seed))
        if len(rows) < eval_rows + 1:
            raise BortError(f"the corpus gives only {len(rows)} sequences; need more than the {eval_rows} "
                            "held out for evaluation (more text, a shorter --max-seq-len or fewer "
                            "--eval-sequences)")
        self.eval_index, self.train_index = order[:eval_rows], order[eval_rows:]
        self.global_batch = config.batch_size * config.grad_accum * world
        self._epoch, self._perm = -1, None

    def _row(self, g: int) -> int:
        epoch, pos = divmod(g, len(self.train_index))
        if epoch != self._epoch:
            seed = self.config.seed * 1_000_003 + epoch + 1
            self._perm = torch.randperm(len(self.train_index), generator=torch.Generator().manual_seed(seed))
            self._epoch = epoch
        return int(self.train_index[self._perm[pos]])

    def _gather(self, rows: list[int]) -> torch.Tensor:
        import numpy as np

        return torch.from_numpy(np.stack([np.asarray(self.rows[r]) for r in rows])).long()

    def _mask(self, ids: torch.Tensor, keys: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask each row with a generator seeded by its own key, independent of batch composition."""
        inputs, labels = [], []
        for row, key in zip(ids, keys, strict=True):
            generator = torch.Generator().manual_seed((self.config.seed * 1_000_003 + key) % 2**62)
            masked, label = mask_tokens(row[None], self.tokenizer, self.config.mask_prob, generator)
            if not (label != -100).any():  # a short row drew no mask: predict one token so no loss is empty
                position = 1 + int(torch.randint(row.numel() - 2, (1,), generator=generator))
                label[0, position], masked[0, position] = row[position], self.tokenizer.mask_token_id
            inputs.append(masked)
            labels.append(label)
        return torch.cat(inputs), torch.cat(labels)

    def micro_batch(self, step: int, micro: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of step `step`, micro-step `micro`, process `rank`; masks keyed by the global row number."""
        b = self.config.batch_size
        start = step * self.global_batch + (micro * self.world + rank) * b
        numbers = list(range(start, start + b))
        return self._mask(self._gather([self._row(g) for g in numbers]), numbers)

    def eval_batches(self, rank: int):
        """This process' share of the held-out rows, masked the same way at every evaluation."""
        mine = self.eval_index[rank::self.world].tolist()
        for start in range(0, len(mine), self.config.batch_size):
            chunk = mine[start:start + self.config.batch_size]
            yield self._mask(self._gather(chunk), [-1 - r for r in chunk])


def fingerprint(config: TrainConfig, world: int) -> dict:
    """What a checkpoint must share with the run that resumes it (logging cadence may change)."""
    out = {k: v for k, v in asdict(config).items() if k not in ("eval_every", "save_every", "log_every")}
    out["world_size"] = world
    return json.loads(json.dumps(out))


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (only whole ones carry the final name)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(folder: Path, step: int, state: dict) -> Path:
    """Write to a temporary folder, then rename it: a crash mid-write leaves no checkpoint-N folder."""
    final = folder / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, "fingerprint": state["fingerprint"]}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(folder)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def make_accelerator(config: TrainConfig, find_unused: bool = False):
    """CPU, one GPU or DDP (from the `accelerate launch`/`torchrun` environment), with mixed precision."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = config.mixed_precision
    if precision == "auto":
        gpu = torch.cuda.is_available()
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if gpu else "no"
    if precision != "no" and not torch.cuda.is_available():
        precision = "no"  # CPU runs stay in fp32: mixed precision there is slower and less exact
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=find_unused)]
    # cpu=True on machines without a GPU: accelerate only sets up gloo DDP under torchrun when told so.
    return Accelerator(mixed_precision=precision, kwargs_handlers=kwargs, cpu=not torch.cuda.is_available())


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (BERT's convention)."""
    decay, plain = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (plain if p.dim() < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class Trainer:
    """Runs `config.max_steps` optimizer steps of `objective` against `teacher` on `rows`, in `output`."""

    def __init__(self, objective: PretrainObjective, teacher: Teacher, rows, config: TrainConfig,
                 output: Path, eval_rows: int = 64, accelerator=None):
        self.objective, self.teacher, self.config = objective, teacher, config
        self.output, self.ckpt_dir = Path(output), Path(output) / "checkpoints"
        unused = not objective.uses_logits and config.mlm_weight == 0
        self.acc = accelerator or make_accelerator(config, find_unused=unused)
        self.plan = BatchPlan(rows, teacher.tokenizer, config, eval_rows, self.acc.num_processes)
        self.metrics_path = self.output / "metrics.jsonl"
        self.tokens_per_step = self.plan.global_batch * rows.shape[1]
        self.writer = None

    # -- logging -------------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        if not self.acc.is_main_process:
            return
        with open(self.metrics_path, "a") as out:
            out.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def _open_logs(self, start: int) -> None:
        """Keep only the records up to the resumed step, so the file reads as one uninterrupted run."""
        if not self.acc.is_main_process:
            return
        kept = []
        if start and self.metrics_path.is_file():
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output / "tensorboard"))
        except ImportError:
            self.writer = None

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss terms over the held-out rows (each process scores its share; sums are reduced)."""
        model = self.acc.unwrap_model(self.model)
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros((), device=self.acc.device)
        for inputs, labels in self.plan.eval_batches(self.acc.process_index):
            inputs, labels = inputs.to(self.acc.device), labels.to(self.acc.device)
            with self.acc.autocast():
                terms = model(inputs, model.targets(self.teacher, inputs, labels), labels)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0) + value.detach().float() * len(inputs)
            count += len(inputs)
        model.train()
        keys = sorted(sums)
        if not keys:
            return {}
        totals = self.acc.reduce(torch.stack([sums[k] for k in keys] + [count]), reduction="sum")
        return {k: float(v / totals[-1]) for k, v in zip(keys, totals[:-1], strict=True)}

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, resume: bool = False, on_step: Callable[[int, dict], None] | None = None) -> dict:
        """Train to `max_steps` (from the last checkpoint with `resume`); returns the final figures.

        `on_step(step, terms)` is called after every optimizer step (tests use it to interrupt runs).
        """
        acc, config = self.acc, self.config
        found = checkpoints(self.ckpt_dir)
        if found and not resume:
            raise BortError(f"{self.output} already holds checkpoints of a run; pass --resume to continue it "
                            "or choose a new --output")
        print_ = acc.print
        fp = fingerprint(config, acc.num_processes)
        state = None
        if resume and found:
            try:
                state = torch.load(found[-1] / "state.pt", map_location="cpu", weights_only=False)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
                raise BortError(f"cannot read checkpoint {found[-1]} ({type(exc).__name__}); delete it to "
                                "resume from the one before") from None
            saved = state.get("fingerprint", {})
            differ = sorted(k for k in set(fp) | set(saved) if fp.get(k) != saved.get(k))
            if differ:
                raise BortError(f"checkpoint {found[-1]} is incompatible with this run: it differs in "
                                f"{', '.join(differ)}; resume with the original settings or a new --output")
            self.objective.load_state_dict(state["model"])
        elif resume:
            print_(f"no checkpoint in {self.ckpt_dir}; starting from step 0")
        optimizer = torch.optim.AdamW(_param_groups(self.objective, config.weight_decay), lr=config.lr)
        scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps(), config.max_steps)
        self.model, optimizer = acc.prepare(self.objective, optimizer)
        self.teacher.model.to(acc.device)
        start = 0
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if acc.scaler is not None and state.get("scaler"):
                acc.scaler.load_state_dict(state["scaler"])
            start = state["step"]
            print_(f"resumed from {found[-1]} at step {start}")
        self._open_logs(start)
        unwrapped = acc.unwrap_model(self.model)
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, initial=start, unit="step", disable=not acc.is_main_process,
                   dynamic_ncols=True, desc="pretrain")
        began, timed_steps, train_seconds, last, last_eval = time.perf_counter(), -1, 0.0, {}, {}
        rank, ga = acc.process_index, config.grad_accum
        if config.eval_every and start == 0:  # the starting point of the curve (random vs sliced init)
            self._log({"kind": "eval", "step": 0, **{k: round(v, 6) for k, v in self.evaluate().items()}})
        self.model.train()
        for step in range(start, config.max_steps):
            tick = time.perf_counter()
            sums: dict[str, torch.Tensor] = {}
            for micro in range(ga):
                torch.manual_seed((config.seed * 1_000_003 + step * 1009 + micro * 31 + rank) % 2**62)
                inputs, labels = self.plan.micro_batch(step, micro, rank)
                inputs, labels = inputs.to(acc.device), labels.to(acc.device)
                sync = contextlib.nullcontext() if micro == ga - 1 else acc.no_sync(self.model)
                with sync:
                    with acc.autocast():
                        targets = unwrapped.targets(self.teacher, inputs, labels)
                        terms = self.model(inputs, targets, labels)
                    acc.backward(terms["loss"] / ga)
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0) + value.detach().float() / ga
            keys = sorted(sums)
            reduced = acc.reduce(torch.stack([sums[k] for k in keys]), reduction="mean").tolist()
            means = dict(zip(keys, reduced, strict=True))
            if not math.isfinite(means["loss"]):
                kept = checkpoints(self.ckpt_dir)
                where = f"the last good checkpoint is {kept[-1]} (resume with --resume)" if kept else \
                    "no checkpoint was saved yet"
                bar.close()
                raise BortError(f"the loss became non-finite ({means['loss']}) at step {step + 1}; stopped "
                                f"without saving; {where}; lower --lr or --warmup, or run without mixed "
                                "precision")
            acc.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            now = time.perf_counter()
            elapsed, step_time = now - began, now - tick
            timed_steps += 1  # throughput: training time only, without the first step (one-off warm-up)
            train_seconds += step_time if timed_steps > 0 else 0.0
            rate = self.tokens_per_step / step_time if step_time > 0 else 0.0
            last = {k: round(v, 6) for k, v in means.items()}
            if done % config.log_every == 0 or done == config.max_steps:
                self._log({"kind": "train", "step": done, **last, "lr": scheduler.get_last_lr()[0],
                           "tokens_per_s": round(rate, 1), "elapsed_s": round(elapsed, 2)})
            shown = " ".join(f"{k} {v:.4f}" for k, v in last.items() if k in ("loss", "mlm", "kd", "hidden",
                                                                               "attention"))
            bar.set_postfix_str(f"{shown} | {rate:,.0f} tok/s", refresh=False)
            bar.update(1)
            if config.eval_every and (done % config.eval_every == 0 or done == config.max_steps):
                last_eval = self.evaluate()
                self._log({"kind": "eval", "step": done, **{k: round(v, 6) for k, v in last_eval.items()}})
            if config.save_every and done % config.save_every == 0 and done < config.max_steps:
                self._save(done, optimizer, scheduler, fp)
            if on_step is not None:
                on_step(done, last)
        bar.close()
        if self.writer is not None:
            self.writer.close()
        total = time.perf_counter() - began
        rate = self.tokens_per_step * timed_steps / train_seconds if timed_steps > 0 else None
        return {"steps": config.max_steps, "train": last, "eval": last_eval, "elapsed_s": round(total, 2),
                "tokens_per_s": round(rate, 1) if rate else None}

    def _save(self, step: int, optimizer, scheduler, fp: dict) -> None:
        acc = self.acc
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"model": acc.unwrap_model(self.model).state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "step": step, "fingerprint": fp,
                     "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}
            save_checkpoint(self.ckpt_dir, step, state)
        acc.wait_for_everyone()
