"""`--init source`: initialise a smaller student by slicing the source model's weights.

Random initialisation throws away everything the source knows; slicing keeps a sub-network of it
(DistilBERT keeps layers, DynaBERT keeps heads and neurons). For a student <D, A, H, I> cut from a
source <D', A', H', I'> (each value no larger), we choose, without data:

* **layers**: D of the D' layers, evenly spaced and always ending with the top layer
  (index round((i + 1) * D' / D) - 1), so the student's last hidden state starts close to the
  teacher's, which is what hidden-state distillation matches.
* **hidden units**: the H residual-stream dimensions with the largest L2 norm of the word-embedding
  column. The residual stream shares one basis across all layers, so one index set is used for every
  embedding, LayerNorm, projection input and projection output.
* **attention heads**: per kept layer, the A heads with the largest weight norm (query, key and value
  rows plus the attention-output columns of the head). When the student's head size d is smaller than
  the source's, each kept head keeps its d query/key dimensions with the largest |q|·|k| row norms and
  its d value dimensions with the largest |v|·|o| norms. The query is scaled by sqrt(d / d') so the
  kept part of each attention score is divided by the source's sqrt(d'), as it was in the source.
* **intermediate units**: per kept layer, the I feed-forward neurons with the largest product of
  input-row and output-column norms (a neuron with either side near zero contributes nothing).

The MLM head (when both have one) is sliced on the hidden units; the vocabulary is kept whole. When the
source is also the (hidden-state) teacher, the learned projection to the teacher's width starts as the
inverse of the hidden-unit slice (`unslice_projection`).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForMaskedLM

from bort import io
from bort.config import DistillConfig
from bort.engine.distillation import DistillationObjective, Teacher
from bort.errors import BortError

LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
# What each axis of a parameter indexes, by name suffix (no suffix ends another, so at most one matches)
_DIMS = {"attention.self.query.weight": ("qk", "hid"), "attention.self.key.weight": ("qk", "hid"),
         "attention.self.query.bias": ("qk",), "attention.self.key.bias": ("qk",),
         "attention.self.value.weight": ("vo", "hid"), "attention.self.value.bias": ("vo",),
         "attention.output.dense.weight": ("hid", "vo"), "intermediate.dense.weight": ("ffn", "hid"),
         "intermediate.dense.bias": ("ffn",), "word_embeddings.weight": (None, "hid"),
         "position_embeddings.weight": (None, "hid"), "token_type_embeddings.weight": (None, "hid"),
         "decoder.weight": (None, "hid"), "predictions.bias": (None,), "lm_head.bias": (None,), "decoder.bias": (None,),
         "transform.dense.weight": ("hid", "hid"), "lm_head.dense.weight": ("hid", "hid"),
         "pooler.dense.weight": ("hid", "hid")}


def choose_layers(source_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced source layers, the last one always included."""
    return [round((i + 1) * source_layers / student_layers) - 1 for i in range(student_layers)]


def _relative(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """State dict keys without the base-model prefix (`bert.`, `roberta.`), head keys kept as they are."""
    return {k[len(prefix) + 1:] if k.startswith(prefix + ".") else k: v for k, v in state.items()}


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in their original order (keeps positional structure)."""
    return torch.topk(scores, k).indices.sort().values


def _head_units(src: dict[str, torch.Tensor], prefix: str, heads: int, src_heads: int,
                hidden_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of Q/K (first) and of V / columns of O (second) that the student's heads keep."""
    q, k, v = (src[f"{prefix}attention.self.{n}.weight"][:, hidden_idx] for n in ("query", "key", "value"))
    o = src[f"{prefix}attention.output.dense.weight"][hidden_idx]
    d_src, d = q.shape[0] // src_heads, hidden_idx.numel() // heads
    norms = lambda w: w.pow(2).sum(dim=1)  # noqa: E731 - per-row squared norm
    per_head = (norms(q) + norms(k) + norms(v) + o.pow(2).sum(dim=0)).view(src_heads, d_src).sum(dim=1)
    if d > d_src:
        # Fewer, wider heads than the source: each student head takes whole source heads side by side
        # (the strongest ceil(H / d') of them, in order), truncated to the student's width.
        whole = _top(per_head, min(src_heads, -(-hidden_idx.numel() // d_src)))
        units = torch.cat([h * d_src + torch.arange(d_src, device=q.device) for h in whole.tolist()])
        return units[:hidden_idx.numel()], units[:hidden_idx.numel()]
    kept = _top(per_head, heads)
    scores = (norms(q) * norms(k)).view(src_heads, d_src), (norms(v) * o.pow(2).sum(dim=0)).view(src_heads, d_src)
    qk, vo = (torch.cat([h * d_src + _top(score[h], d) for h in kept.tolist()]) for score in scores)
    return qk, vo


def _dims(name: str) -> tuple[str | None, ...]:
    """What each axis of a parameter indexes: 'hid' (residual), 'qk', 'vo', 'ffn', or None (kept whole)."""
    if dims := next((d for suffix, d in _DIMS.items() if name.endswith(suffix)), None):
        return dims
    if name.endswith("output.dense.weight") and ".layer." in f".{name}":
        return ("hid", "ffn")
    return ("hid",)  # LayerNorms, output and head biases: one value per residual unit


@torch.no_grad()
def slice_into(student: nn.Module, source: nn.Module) -> dict[str, object]:
    """Copy a sliced sub-network of `source` into `student` (both stock BERT/RoBERTa models, base or MLM); returns
    what was chosen (layers, number of hidden units, heads kept per layer) for the model card."""
    sc, tc = student.config, source.config
    shape = lambda c: (c.num_hidden_layers, c.num_attention_heads, c.hidden_size, c.intermediate_size)  # noqa: E731
    if any(s > t for s, t in zip(shape(sc), shape(tc), strict=True)) or sc.vocab_size != tc.vocab_size:
        raise BortError(f"--init source needs a student no larger than the source in every dimension and "
                        f"the same vocabulary: student D,A,H,I={shape(sc)} vocab {sc.vocab_size}, source "
                        f"{shape(tc)} vocab {tc.vocab_size}; use --init random")
    if sc.model_type != tc.model_type:
        raise BortError(f"--init source: student type '{sc.model_type}' differs from source '{tc.model_type}'")
    src, dst = (_relative(model.state_dict(), model.base_model_prefix) for model in (source, student))
    hidden = _top(src["embeddings.word_embeddings.weight"].float().pow(2).sum(dim=0), sc.hidden_size)
    layers = choose_layers(tc.num_hidden_layers, sc.num_hidden_layers)
    index: dict[int, dict[str, torch.Tensor]] = {}
    for i, j in enumerate(layers):
        prefix = f"encoder.layer.{j}."
        qk, vo = _head_units(src, prefix, sc.num_attention_heads, tc.num_attention_heads, hidden)
        w_in, w_out = src[f"{prefix}intermediate.dense.weight"][:, hidden], src[f"{prefix}output.dense.weight"][hidden]
        ffn = _top(w_in.pow(2).sum(dim=1) * w_out.pow(2).sum(dim=0), sc.intermediate_size)
        index[i] = {"hid": hidden, "qk": qk, "vo": vo, "ffn": ffn}
    d_src, d = tc.hidden_size // tc.num_attention_heads, sc.hidden_size // sc.num_attention_heads
    copied = 0
    for name, target in dst.items():
        match = LAYER.match(name)
        layer = int(match.group(1)) if match else None
        source_name = f"encoder.layer.{layers[layer]}.{match.group(2)}" if match else name
        if source_name not in src:
            continue  # e.g. an MLM head the source does not have: keep its random init
        value = src[source_name]
        sets = index[layer] if layer is not None else {"hid": hidden}
        for axis, kind in enumerate(_dims(name)[:value.dim()]):
            if kind is not None and value.shape[axis] != target.shape[axis]:
                value = value.index_select(axis, sets[kind])
        if name.endswith(("attention.self.query.weight", "attention.self.query.bias")) and d != d_src:
            # q·k over d of the d' dimensions, divided by sqrt(d) instead of sqrt(d'): rescale q so the
            # scores keep the source's scale (sqrt(d / d') undoes the changed divisor).
            value = value * math.sqrt(d / d_src)
        if value.shape != target.shape:
            raise BortError(f"--init source: cannot slice {source_name} {tuple(value.shape)} into "
                            f"{tuple(target.shape)}")
        target.copy_(value.to(target.dtype))
        copied += 1
    return {"layers": layers, "hidden_units": sc.hidden_size, "tensors_copied": copied,
            "tensors_total": len(dst), "hidden_index": hidden.tolist()}


@torch.no_grad()
def unslice_projection(projection: nn.Module, hidden_index: list[int]) -> None:
    """Start the student-to-teacher projection as the inverse of the hidden-unit slice: student unit j
    goes back to teacher unit hidden_index[j], the others start at zero. Without this a sliced student
    begins behind a random projection and its first steps only relearn what slicing kept."""
    if isinstance(projection, nn.Linear) and projection.in_features == len(hidden_index):
        projection.weight.zero_()
        projection.weight[torch.tensor(hidden_index), torch.arange(len(hidden_index))] = 1.0
        projection.bias.zero_()


def slicing_source(config: DistillConfig, source: str | None, teacher: Teacher) -> nn.Module | None:
    """The model `--init source` slices when it is not the teacher (None: the teacher itself, or random init);
    a preset is refused by the loader, having no weights to slice."""
    slicing = config.init == "source" and source is not None and str(source) != teacher.name
    return io.load_model(source) if slicing else None


def student_objective(arch: Any, teacher: Teacher, config: DistillConfig, seed: int, source: nn.Module | None = None,
                      cache: dict | None = None) -> tuple[DistillationObjective, dict[str, object] | None]:
    """A fresh MLM-shaped student of config `arch` inside the distillation objective: at random, or sliced from
    `source` (default: the teacher) with `config.init == "source"`; sliced from the teacher, its projection
    starts as the slice's inverse. The search's candidates and `bort pretrain` are both made here."""
    torch.manual_seed(seed)
    objective = DistillationObjective(AutoModelForMaskedLM.from_config(arch), teacher, config, cache)
    if config.init != "source":
        return objective, None
    sliced = slice_into(objective.student, source if source is not None else teacher.model)
    hidden_index = sliced.pop("hidden_index")
    if (source is None or source is teacher.model) and objective.projection is not None:
        unslice_projection(objective.projection, hidden_index)
    return objective, sliced
