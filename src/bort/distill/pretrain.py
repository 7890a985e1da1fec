"""`bort pretrain`: distil an architecture from the teacher on a corpus and write a stock Hugging Face folder.

The student is an `...ForMaskedLM` model of the source's type with its base model's pooler, so the output loads
with `AutoModelForMaskedLM` and with `AutoModel` (nothing newly initialised) and needs no remote code. The
training is the engine's, on the distillation objective the search's ê also measures.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bort import io
from bort.config import PretrainConfig
from bort.distill.data import BatchPlan, cached_sequences, check_corpus
from bort.distill.init import slicing_source, student_objective
from bort.engine.distillation import load_teacher
from bort.engine.loop import Engine
from bort.errors import BortError
from bort.families.base import check_fits, parse_arch
from bort.families.bert import BertFamily
from bort.speed.latency import cpu_latency

ARCH_TEXT = re.compile(r"^\s*\d+\s*(,\s*\d+\s*){3}$")
LATENCY_SHAPE = (1, 128)  # batch, sequence length of the model card's CPU latency


@dataclass
class PretrainResult:
    """What `bort pretrain` made; `to_dict()` is what pretrain.json and the model card hold."""

    output: Path
    architecture: dict[str, int]
    model_type: str
    params: int
    effective_params: int
    teacher: str
    distillation: str
    corpus: list[str]
    sequences: int
    init: str
    init_slicing: dict[str, Any] | None
    steps: int
    batch_size: int  # global: per process x accumulation x processes
    processes: int
    train: dict[str, float]
    eval: dict[str, float]
    tokens_per_s: float | None
    seconds: float
    settings: dict[str, Any]
    latency: dict[str, Any] | None = None  # cpu_latency_ms at batch 1 x 128, threads, a busy-machine warning

    def to_dict(self) -> dict[str, Any]:
        return io.strict_json(asdict(self))


def resolve_arch(arch: str | os.PathLike | tuple[int, ...] | Any, source: str | None) -> Any:
    """A student config from a `bort extract` chosen/ folder, a config.json, or D,A,H,I cut from `source`."""
    if hasattr(arch, "to_dict"):
        return arch.__class__.from_dict(arch.to_dict())
    if isinstance(arch, tuple | list) or ARCH_TEXT.match(str(arch)):
        family = BertFamily(source)
        return family.config(parse_arch(family, arch if isinstance(arch, str) else tuple(arch)))
    if (path := Path(str(arch)).expanduser()).exists():
        return BertFamily(io.load_config(path)).source_config  # BertFamily checks the model type is BERT-shaped
    raise BortError(f"--arch '{arch}' is neither an existing folder or config.json nor D,A,H,I (e.g. 4,8,256,512)")


def model_card(result: PretrainResult) -> tuple[dict[str, Any], str]:
    arch, latency = result.architecture, result.latency or {}
    warning = f"; WARNING: {latency['latency_warning']}" if "latency_warning" in latency else ""
    speed = (f"- CPU latency: {latency['cpu_latency_ms']} ms (batch {LATENCY_SHAPE[0]}, sequence {LATENCY_SHAPE[1]}, "
             f"{latency['latency_threads']} threads, PyTorch eager){warning}\n" if latency else "")
    body = (f"# Bort student ⟨D={arch['D']}, A={arch['A']}, H={arch['H']}, I={arch['I']}⟩\n\n"
            f"Distilled by `bort pretrain` from `{result.teacher}` for {result.steps} steps ({result.distillation}); "
            f"initialised from {result.init}.\n\n"
            f"- parameters: {result.params:,} total, {result.effective_params:,} without embeddings\n{speed}"
            f"- final held-out figures: {io.strict_json(result.eval)}\n\n"
            "```python\nfrom transformers import AutoModel, AutoTokenizer\n"
            "model = AutoModel.from_pretrained(\"<this folder>\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"<this folder>\")\n```\n")
    return {"library_name": "transformers", "pipeline_tag": "fill-mask", "tags": ["bort", "distillation"],
            "bort": {k: v for k, v in result.to_dict().items() if k != "output"}}, body


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Distil `config.arch` from `config.teacher` on `config.corpus` and save a stock folder in `config.output`."""
    corpus = [str(c) for c in config.corpus]
    check_corpus(corpus)
    teacher = load_teacher(config.teacher)
    config.check_weights(teacher.has_mlm_head)
    arch = resolve_arch(config.arch, config.source if config.source is not None else teacher.name)
    vocab = teacher.model.config.vocab_size
    if arch.vocab_size != vocab or len(teacher.tokenizer) > arch.vocab_size:
        raise BortError(f"the architecture's vocabulary ({arch.vocab_size}) does not match the teacher's ({vocab}, "
                        f"tokenizer {len(teacher.tokenizer)}); extract the architecture from the teacher (or pass "
                        "--source with the teacher's model)")
    family = BertFamily(arch)
    check_fits(family, family.maximum(), 16, "train")
    if config.max_seq_len > family.max_seq_len:
        raise BortError(f"--max-seq-len {config.max_seq_len} exceeds the architecture's {family.max_seq_len} positions")
    world = io.process()[1]
    if config.eval_sequences < world:
        raise BortError(f"--eval-sequences {config.eval_sequences} is fewer than the {world} processes; every process "
                        f"scores a share of the held-out rows: use at least {world}")
    source_model = slicing_source(config, config.source, teacher)
    output = io.prepare_output(config.output, "pretrain", config.resume, config.overwrite,
                               (config.teacher, config.source, config.arch, *corpus))
    if not io.is_main():
        io.barrier()  # process 0 tokenises the corpus; the others read its cache
    rows = cached_sequences(corpus, teacher.tokenizer, config.max_seq_len, config.max_sequences, config.cache_dir)
    if io.is_main():
        io.barrier()
    objective, sliced = student_objective(arch, teacher, config, config.seed, source_model)
    plan = BatchPlan(rows, teacher.tokenizer, config.batch_size, config.mask_prob, config.seed, config.eval_sequences,
                     config.grad_accum)
    shape = family.maximum()
    fingerprint = {**config.identity(), "arch": list(shape), "model_type": arch.model_type, "vocab": arch.vocab_size,
                   "teacher": teacher.name, "corpus": corpus, "rows": int(rows.shape[0]), "world_size": world}
    trained = Engine(objective, plan, config, output, fingerprint, plan.eval_batches, desc="pretrain",
                     progress=config.progress).run(resume=config.resume)
    cost = family.cost(shape)
    result = PretrainResult(
        output=output, architecture=dict(zip(family.param_names, shape, strict=True)), model_type=arch.model_type,
        params=cost.params, effective_params=cost.effective_params, teacher=teacher.name, processes=world,
        distillation="logits (Bort recipe)" if teacher.has_mlm_head else "hidden states", init=config.init,
        corpus=corpus or ["pydoc_data (Python's documentation)"], sequences=int(rows.shape[0]), init_slicing=sliced,
        steps=config.max_steps, batch_size=config.batch_size * config.grad_accum * world, train=trained.train,
        eval=trained.eval, tokens_per_s=trained.tokens_per_s, seconds=trained.seconds, settings=config.to_dict())
    if io.is_main():
        student = objective.student
        if config.measure_latency:
            ids = family.example_input(shape, LATENCY_SHAPE[0], min(LATENCY_SHAPE[1], family.max_seq_len))["input_ids"]
            result.latency = cpu_latency(student.base_model, {"input_ids": ids})
        io.save_model(output, student, teacher.tokenizer)
        io.write_model_card(output, *model_card(result))
        io.write_json(output / "pretrain.json", result.to_dict())
    io.barrier()
    return result
