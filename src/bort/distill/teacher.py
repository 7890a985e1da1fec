"""Loading the teacher: weights (safetensors first), tokenizer, and whether it has an MLM head."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

from bort.errors import BortError
from bort.families.bert import PRESETS, default_source, load_config

MLM_ARCHITECTURE_SUFFIXES = ("ForMaskedLM", "ForPreTraining")


@dataclass
class Teacher:
    model: torch.nn.Module
    tokenizer: object
    has_mlm_head: bool
    hidden_size: int
    name: str


def load_tokenizer(name_or_path: str | os.PathLike):
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as exc:
        raise BortError(f"cannot load a tokenizer from '{name_or_path}' ({type(exc).__name__}); pass a model "
                        "folder that holds tokenizer files") from None


def load_teacher(name_or_path: str | os.PathLike | None = None) -> Teacher:
    """Load a pretrained teacher in eval mode; hub names work where the network allows."""
    name = str(name_or_path) if name_or_path is not None else default_source()
    if name in PRESETS:
        raise BortError(f"preset '{name}' is a config without weights and cannot teach; pass --teacher with a "
                        "pretrained model folder (the default is the embedded MiniLM)")
    config = load_config(name)
    has_mlm_head = any(a.endswith(MLM_ARCHITECTURE_SUFFIXES) for a in (config.architectures or []))
    model_class = AutoModelForMaskedLM if has_mlm_head else AutoModel
    try:
        model = model_class.from_pretrained(name, config=config)
    except (OSError, ValueError) as exc:
        raise BortError(f"cannot load teacher weights from '{name}' ({type(exc).__name__}); pass a model folder "
                        "with model.safetensors or pytorch_model.bin") from None
    model.eval().requires_grad_(False)
    return Teacher(model=model, tokenizer=load_tokenizer(name), has_mlm_head=has_mlm_head,
                   hidden_size=config.hidden_size, name=name)
