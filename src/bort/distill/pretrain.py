"""`bort pretrain`: distil a chosen architecture from the teacher and write a stock Hugging Face folder.

The student is always an `...ForMaskedLM` model of the source's type, so the output loads with both
`AutoModelForMaskedLM` and `AutoModel` (which ignores the head) and needs no remote code.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoModelForMaskedLM, PretrainedConfig

from bort.distill.data import cached_sequences
from bort.distill.init import slice_into, unslice_projection
from bort.distill.teacher import Teacher, load_teacher
from bort.distill.trainer import PretrainObjective, TrainConfig, Trainer, make_accelerator
from bort.errors import BortError
from bort.families.base import parse_arch
from bort.families.bert import BertFamily, load_config

ARCH_TEXT = re.compile(r"^\s*\d+\s*(,\s*\d+\s*){3}$")
LATENCY_SHAPE = (1, 128)  # batch, sequence length of the model card's CPU latency


def resolve_arch(arch: str | os.PathLike | tuple[int, ...] | PretrainedConfig,
                 source: str | os.PathLike | None) -> PretrainedConfig:
    """A student config from a `bort extract` chosen/ folder, a config.json, or D,A,H,I cut from `source`."""
    if isinstance(arch, PretrainedConfig):
        return arch.__class__.from_dict(arch.to_dict())
    if isinstance(arch, tuple | list) or ARCH_TEXT.match(str(arch)):
        family = BertFamily(source)
        return family.config(parse_arch(family, arch if isinstance(arch, str) else tuple(arch)))
    if Path(str(arch)).expanduser().exists():
        config = load_config(Path(str(arch)).expanduser())
        BertFamily(config)  # checks the model type is BERT-shaped
        return config
    raise BortError(f"--arch '{arch}' is neither an existing folder or config.json nor D,A,H,I "
                    "(e.g. 4,8,256,512)")


def _check_output(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise BortError(f"cannot write to the output folder {output}: {exc.strerror}; choose another --output"
                        ) from None


def _check_vocabulary(config: PretrainedConfig, teacher: Teacher) -> None:
    vocab = teacher.model.config.vocab_size
    if config.vocab_size != vocab or len(teacher.tokenizer) > config.vocab_size:
        raise BortError(f"the architecture's vocabulary ({config.vocab_size}) does not match the teacher's "
                        f"({vocab}, tokenizer {len(teacher.tokenizer)}); extract the architecture from the "
                        "teacher (or pass --source with the teacher's model)")


def _source_model(source: str | None, teacher: Teacher) -> torch.nn.Module:
    if source is None or str(source) == teacher.name:
        return teacher.model
    try:
        return AutoModel.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise BortError(f"--init source: cannot load weights from '{source}' ({type(exc).__name__}); "
                        "pass a model folder with weights") from None


def model_card(summary: dict[str, Any]) -> str:
    """README.md with YAML metadata: what the model is, how it was made and how fast it runs."""
    import yaml

    meta = {"library_name": "transformers", "pipeline_tag": "fill-mask", "tags": ["bort", "distillation"],
            "bort": summary}
    arch = summary["architecture"]
    return (f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n"
            f"# Bort student ⟨D={arch['D']}, A={arch['A']}, H={arch['H']}, I={arch['I']}⟩\n\n"
            f"Distilled by `bort pretrain` from `{summary['teacher']}` for {summary['steps']} steps "
            f"({summary['distillation']}); initialised from {summary['init']}.\n\n"
            f"- parameters: {summary['params']:,} total, {summary['effective_params']:,} without embeddings\n"
            f"- CPU latency: {summary['cpu_latency_ms']} ms (batch {LATENCY_SHAPE[0]}, sequence "
            f"{LATENCY_SHAPE[1]}, {summary['latency_threads']} threads, PyTorch eager)\n"
            f"- final held-out figures: {json.dumps(summary['eval'])}\n\n"
            "```python\nfrom transformers import AutoModel, AutoTokenizer\n"
            "model = AutoModel.from_pretrained(\"<this folder>\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"<this folder>\")\n```\n")


def pretrain(arch: str | os.PathLike | tuple[int, ...] | PretrainedConfig, output: str | os.PathLike,
             teacher: str | os.PathLike | None = None, corpus: list[str | os.PathLike] | None = None,
             source: str | os.PathLike | None = None, init: str = "random", max_steps: int = 1000,
             batch_size: int = 32, grad_accum: int = 1, max_seq_len: int = 128, lr: float = 5e-4,
             warmup: float = 0.06, weight_decay: float = 0.01, mask_prob: float = 0.15,
             temperature: float = 2.0, mlm_weight: float = 0.1, kd_weight: float = 0.5,
             hidden_weight: float = 1.0, hidden_loss: str = "mse",
             attention_weight: float = 0.0, eval_every: int = 100, eval_sequences: int = 64,
             save_every: int = 500, log_every: int = 10, resume: bool = False, seed: int = 0,
             mixed_precision: str = "auto", max_sequences: int | None = None,
             cache_dir: str | os.PathLike | None = None, measure_latency: bool = True) -> dict[str, Any]:
    """Distil `arch` from `teacher` on `corpus` and save a stock Hugging Face folder in `output`.

    With an MLM teacher the loss is Bort's (mlm_weight · cross-entropy + kd_weight · T² · KL); without
    one (the embedded MiniLM) it is hidden_weight · hidden-state loss + mlm_weight · cross-entropy;
    attention_weight > 0 adds MiniLMv2 attention relations. `init="source"` slices the source's (by
    default the teacher's) weights into the student. Returns the summary also written to the card.
    """
    if init not in ("random", "source"):
        raise BortError(f"--init must be 'random' or 'source', not '{init}'")
    if hidden_loss not in ("mse", "cosine"):
        raise BortError(f"--hidden-loss must be 'mse' or 'cosine', not '{hidden_loss}'")
    if min(max_steps, batch_size, grad_accum) < 1:
        raise BortError("--max-steps, --batch-size and --grad-accum must be at least 1")
    output = Path(output).expanduser()
    corpus = [str(c) for c in (corpus or [])]
    teach = load_teacher(teacher)
    config = resolve_arch(arch, source if source is not None else teach.name)
    _check_vocabulary(config, teach)
    limit = BertFamily(config).max_seq_len
    if max_seq_len > limit:
        raise BortError(f"--max-seq-len {max_seq_len} exceeds the architecture's {limit} positions")
    _check_output(output)
    train_config = TrainConfig(
        max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup=warmup,
        weight_decay=weight_decay, mask_prob=mask_prob, temperature=temperature, mlm_weight=mlm_weight,
        kd_weight=kd_weight, hidden_weight=hidden_weight, hidden_loss=hidden_loss,
        attention_weight=attention_weight, seed=seed, eval_every=eval_every, save_every=save_every,
        log_every=log_every, mixed_precision=mixed_precision)
    accelerator = make_accelerator(train_config, find_unused=not teach.has_mlm_head and mlm_weight == 0)
    with accelerator.main_process_first():  # one process tokenises; the others read its cache
        rows = cached_sequences(corpus, teach.tokenizer, max_seq_len, max_sequences, cache_dir)
    family = BertFamily(config)
    shape = family.maximum()
    train_config.extra = {"arch": list(shape), "model_type": config.model_type, "vocab": config.vocab_size,
                          "teacher": teach.name, "corpus": corpus, "max_seq_len": max_seq_len, "init": init,
                          "rows": int(rows.shape[0]), "eval_sequences": eval_sequences}
    torch.manual_seed(seed)
    student = AutoModelForMaskedLM.from_config(config)
    sliced = slice_into(student, _source_model(source, teach)) if init == "source" else None
    objective = PretrainObjective(student, teach, train_config)
    if sliced is not None:
        hidden_index = sliced.pop("hidden_index")
        if source is None or str(source) == teach.name:
            unslice_projection(objective.projection, hidden_index)
    trainer = Trainer(objective, teach, rows, train_config, output, eval_sequences, accelerator)
    result = trainer.run(resume=resume)
    accelerator.wait_for_everyone()
    cost = family.cost(shape)
    summary: dict[str, Any] = {
        "architecture": dict(zip(family.param_names, shape, strict=True)), "model_type": config.model_type,
        "params": cost.params, "effective_params": cost.effective_params, "teacher": teach.name,
        "distillation": "logits (Bort recipe)" if teach.has_mlm_head else "hidden states",
        "attention_relations": attention_weight > 0,
        "corpus": corpus or ["pydoc_data (Python's documentation)"],
        "sequences": int(rows.shape[0]), "max_seq_len": max_seq_len, "init": init, "init_slicing": sliced,
        "steps": max_steps, "batch_size": batch_size * grad_accum * accelerator.num_processes,
        "lr": lr, "seed": seed, "final_losses": result["train"], "eval": result["eval"],
        "tokens_per_s": result["tokens_per_s"], "train_seconds": result["elapsed_s"],
        "processes": accelerator.num_processes, "cpu_latency_ms": None,
        "latency_threads": torch.get_num_threads()}
    if accelerator.is_main_process:
        student = accelerator.unwrap_model(trainer.model).student.to("cpu").float()
        if measure_latency:
            from bort.speed.latency import measure_model

            batch, seq = LATENCY_SHAPE
            ids = torch.randint(5, config.vocab_size, (batch, min(seq, limit)),
                                generator=torch.Generator().manual_seed(0))
            summary["cpu_latency_ms"] = round(measure_model(student.base_model, {"input_ids": ids}), 3)
        student.save_pretrained(output)
        teach.tokenizer.save_pretrained(output)
        (output / "README.md").write_text(model_card(summary))
        (output / "pretrain.json").write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    return summary
