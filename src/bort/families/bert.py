"""The `bert` family: sub-architectures <D, A, H, I> of any BERT- or RoBERTa-shaped encoder.

D = layers, A = attention heads, H = hidden size, I = intermediate (feed-forward) size. Everything
else (vocabulary, positions, token types, model type, activation) comes from the source config, and
built models are stock `transformers` models, so a chosen architecture loads with `AutoConfig`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, PretrainedConfig

from bort import io
from bort.errors import BortError
from bort.families.base import Arch, Cost, register_family

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
ARCH_KEYS = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")  # D, A, H, I

# Operation counts (in FLOPs) of the elementwise work per element; matrix products count 2 per multiply-add.
LAYERNORM_OPS = 8  # mean, variance, normalise, scale and shift
GELU_OPS = 8  # tanh-approximation cost; erf is comparable
SOFTMAX_OPS = 5  # max, subtract, exp, sum, divide


def positions(config: PretrainedConfig) -> int:
    """Longest input the position table allows (RoBERTa-style models reserve padding_idx + 1 slots)."""
    reserved = 0 if config.model_type == "bert" else (getattr(config, "pad_token_id", 0) or 0) + 1
    return config.max_position_embeddings - reserved


class BertFamily:
    """Sub-architectures of one BERT/RoBERTa-shaped source config."""

    name = "bert"
    param_names = ("D", "A", "H", "I")

    def __init__(self, source: str | os.PathLike | PretrainedConfig | None = None):
        config = source if isinstance(source, PretrainedConfig) else io.load_config(source)
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise BortError(f"source model type '{config.model_type}' is not BERT-shaped; supported: "
                            f"{', '.join(SUPPORTED_MODEL_TYPES)}")
        self.source_config = config

    def maximum(self) -> Arch:
        return tuple(getattr(self.source_config, key) for key in ARCH_KEYS)

    def default_space(self) -> dict[str, list[int]]:
        """Fractions of the source: depth 1/3..2/3, heads 1/2 and 1, width 1/2..1, feed-forward 1/8..1/2."""
        D, A, H, I = self.maximum()
        depth = sorted({max(1, round(D * f)) for f in (1 / 3, 1 / 2, 2 / 3)})
        heads = sorted({max(1, A // 2), A})
        hidden = sorted({h for h in (H // 2, (3 * H) // 4, H) if h % 32 == 0} or {H})
        inter = sorted({max(1, I // 8), max(1, I // 4), I // 2})
        return {"D": depth, "A": heads, "H": hidden, "I": inter}

    def invalid_reason(self, arch: Arch) -> str | None:
        if len(arch) != 4:
            return "needs 4 values D,A,H,I"
        if min(arch) < 1:
            return "values must be positive"
        return "H not divisible by A" if arch[2] % arch[1] else None

    def config(self, arch: Arch) -> PretrainedConfig:
        """The source config with <D, A, H, I> replaced: a stock config for `save_pretrained`."""
        config = self.source_config.__class__.from_dict(self.source_config.to_dict())
        config.update({**dict(zip(ARCH_KEYS, arch, strict=True)), "architectures": None})
        return config

    def build(self, arch: Arch) -> torch.nn.Module:
        return AutoModel.from_config(self.config(arch))

    def save(self, arch: Arch, folder: Path) -> None:
        io.save_model(folder, self.config(arch))

    def fingerprint(self) -> dict[str, Any]:
        keep = ("model_type", "vocab_size", "max_position_embeddings", "type_vocab_size", *ARCH_KEYS, "hidden_act")
        return {k: getattr(self.source_config, k, None) for k in keep}

    def cost(self, arch: Arch, batch_size: int = 1, seq_len: int = 128) -> Cost:
        D, A, H, I = arch
        c = self.source_config
        embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * H + 2 * H
        attention = 4 * (H * H + H) + 2 * H
        feed_forward = H * I + I + I * H + H + 2 * H
        pooler = H * H + H
        params = embeddings + D * (attention + feed_forward) + pooler
        return Cost(params=params, effective_params=params - embeddings, ops=self._ops(arch, batch_size, seq_len))

    def matmul_ops(self, arch: Arch, batch_size: int, seq_len: int) -> int:
        """FLOPs of the matrix products alone (2 per multiply-add): what a FLOP counter sees."""
        D, A, H, I = arch
        tokens = batch_size * seq_len
        projections = 2 * tokens * (4 * H * H + 2 * H * I)  # Q, K, V, output; two feed-forward matrices
        attention = 2 * 2 * batch_size * seq_len * seq_len * H  # scores and weighted sum over all heads
        pooler = 2 * batch_size * H * H  # dense layer on [CLS]
        return D * (projections + attention) + pooler

    def _ops(self, arch: Arch, batch_size: int, seq_len: int) -> int:
        """FLOPs of one forward pass: the matrix products plus elementwise work, summed over layers."""
        D, A, H, I = arch
        tokens = batch_size * seq_len
        embeddings = tokens * (2 * H + LAYERNORM_OPS * H)  # two additions, one LayerNorm
        softmax = batch_size * A * seq_len * seq_len * (SOFTMAX_OPS + 1)  # +1: scale by 1/sqrt(d)
        elementwise = tokens * (4 * H + I + 2 * H + 2 * LAYERNORM_OPS * H + GELU_OPS * I)  # biases, residuals
        pooler = batch_size * 2 * H  # bias and tanh on [CLS]
        return self.matmul_ops(arch, batch_size, seq_len) + embeddings + D * (softmax + elementwise) + pooler

    @property
    def max_seq_len(self) -> int:
        return positions(self.source_config)

    def example_input(self, arch: Arch, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        if seq_len > self.max_seq_len:
            raise BortError(f"sequence length {seq_len} exceeds the source's maximum {self.max_seq_len}")
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(5, self.source_config.vocab_size, (batch_size, seq_len), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


register_family("bert", BertFamily)
