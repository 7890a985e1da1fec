"""Resolve what a user names on `bort bench`/`bort export` into a config, an architecture and weights.

A model may be a built-in preset (random weights), a config.json (random weights), a Hugging Face
folder with weights, or a hub name. Speed does not depend on the weights, so configs are enough to
benchmark; export prefers real weights and says when it had none.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import PretrainedConfig

from bort import io
from bort.errors import BortError
from bort.families.base import Arch
from bort.families.bert import BertFamily

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
CLASSIFIER_SUFFIX = "ForSequenceClassification"


@dataclass
class SpeedModel:
    """One model to time or export: its label, config, architecture and where its weights live."""

    label: str
    source: str
    config: PretrainedConfig
    family: BertFamily
    arch: Arch
    weights: str | None  # folder or hub name holding pretrained weights; None means random weights

    @property
    def classifier(self) -> bool:
        """True when the checkpoint carries a sequence-classification head (export keeps it)."""
        return self.weights is not None and any(
            a.endswith(CLASSIFIER_SUFFIX) for a in (self.config.architectures or []))

    def build(self, head: bool = False) -> torch.nn.Module:
        """The model in eval mode: pretrained weights when known, else seeded random weights. Each model gets its own
        copy of the config: transformers keeps settings such as the attention implementation on the config, and a change
        to one model must not reach the others."""
        kind = "classification" if head and self.classifier else "base"
        config = copy.deepcopy(self.config)
        if self.weights is not None:
            return io.load_model(self.weights, kind, config).requires_grad_(False)
        torch.manual_seed(0)
        return getattr(transformers, io.MODEL_CLASSES[kind]).from_config(config).eval().requires_grad_(False)

    def tokenizer_source(self) -> str | None:
        """Where a tokenizer for this model can be loaded from (the BERT WordPiece for BERT-vocab configs)."""
        if self.weights is not None and not Path(self.weights).is_dir():
            return self.weights  # hub name
        folder = Path(self.weights or self.source)
        folder = folder.parent if folder.is_file() else folder
        if folder.is_dir() and (any(folder.glob("tokenizer*")) or (folder / "vocab.txt").is_file()):
            return str(folder)
        if self.config.model_type == "bert" and self.config.vocab_size == 30522:
            return io.default_source()  # the embedded MiniLM ships the bert-base-uncased WordPiece
        return None

def _label(source: str) -> str:
    path = Path(source)
    if source in io.PRESETS or not path.exists():
        return source
    path = path.resolve().parent if path.is_file() else path.resolve()
    return path.parent.name if path.name == "model" else path.name


def resolve(spec: str | os.PathLike) -> SpeedModel:
    """'LABEL=SOURCE' or 'SOURCE' -> SpeedModel; a one-line BortError for anything unusable."""
    spec, label = str(spec), None
    head, sep, tail = spec.partition("=")
    if sep and head and "/" not in head and not Path(spec).exists():
        label, spec = head, tail
    config = io.load_config(spec)
    family = BertFamily(config)
    path = Path(spec)
    if path.is_dir():
        weights = spec if any((path / f).is_file() for f in WEIGHT_FILES) else None
        io.check_weights(path)
    else:
        weights = None if spec in io.PRESETS or path.is_file() else spec  # hub name: from_pretrained
    return SpeedModel(label=label or _label(spec), source=spec, config=config, family=family,
                      arch=family.maximum(), weights=weights)


def input_names(config: PretrainedConfig) -> list[str]:
    """Model inputs in order; token_type_ids only where the model has more than one segment type."""
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if getattr(config, "type_vocab_size", 1) > 1 else [])


def example_inputs(model: SpeedModel, batch_size: int, seq_len: int, padded: bool = False,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (ids >= 5 avoid special tokens); `padded` gives rows decreasing real lengths."""
    if seq_len > model.family.max_seq_len:
        raise BortError(f"sequence length {seq_len} exceeds the maximum {model.family.max_seq_len} of "
                        f"'{model.label}'")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (batch_size, seq_len), generator=generator)
    mask = torch.ones_like(ids)
    if padded:
        for row in range(batch_size):
            length = max(1, seq_len - (row * seq_len) // max(batch_size, 2))
            mask[row, length:] = 0
            ids[row, length:] = model.config.pad_token_id or 0
    tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {name: tensors[name] for name in input_names(model.config)}
