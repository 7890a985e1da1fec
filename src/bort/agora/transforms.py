"""Generated points: new points near a given one, by a transformation in a representation space. Agora makes them
near its mistakes; `bort finetune --augment` (TinyBERT's data augmentation) and Agora's uniform control near random
train points; a labeller or teacher labels them.

Two transformations:
- `neighbour`: replace a fraction of the words' tokens by one of their k nearest neighbours (cosine) in the
  model's input-embedding space. Needs only an encoder, so it works with any student or teacher.
- `infill`: mask a fraction of the tokens and let a masked-LM (e.g. a `bort pretrain` student) sample a
  replacement from its top-k. More fluent, but needs an MLM head.
Candidates are then kept only when their sentence-embedding similarity to the source lies inside a band:
similar enough to stay near the mistake, different enough to be a new point.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from bort import io
from bort.errors import BortError
from bort.tasks.registry import Example

if TYPE_CHECKING:
    from bort.tasks.teacher import TaskTeacher

TRANSFORMS = ("neighbour", "infill")


def _word_positions(tokenizer: Any, ids: list[int]) -> list[int]:
    """Positions of alphabetic, non-special tokens: the ones worth changing."""
    special = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return [i for i, (t, tid) in enumerate(zip(tokens, ids, strict=True))
            if tid not in special and t.lstrip("#").lstrip("Ġ▁").isalpha()]


def _pick(rng: random.Random, positions: list[int], fraction: float) -> list[int]:
    k = max(1, round(fraction * len(positions)))
    return sorted(rng.sample(positions, min(k, len(positions))))


class NeighbourSubstitution:
    """Swap tokens for their nearest neighbours in the input-embedding space (same word/sub-word kind)."""

    name = "neighbour"

    def __init__(self, tokenizer: Any, embeddings: torch.Tensor, fraction: float = 0.15, k: int = 8):
        self.tokenizer, self.fraction, self.k = tokenizer, fraction, k
        self.unit = F.normalize(embeddings.detach().float(), dim=-1)
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(self.unit))))
        special = set(tokenizer.all_special_ids)
        usable = torch.tensor([i not in special and t is not None and t.lstrip("#").lstrip("Ġ▁").isalpha()
                               for i, t in enumerate(vocab)])
        piece = torch.tensor([t is not None and t.startswith("##") for t in vocab])
        pools = {False: torch.nonzero(usable & ~piece).squeeze(1), True: torch.nonzero(usable & piece).squeeze(1)}
        self.pools = {kind: (ids, self.unit[ids]) for kind, ids in pools.items()}  # ids and their unit vectors
        self.vocab, self.cache = vocab, {}

    def neighbours(self, token_id: int) -> list[int]:
        self.look_up([token_id])
        return self.cache[token_id]

    def look_up(self, token_ids: list[int]) -> None:
        """Cache the k nearest neighbours of every token not yet looked up, one matrix product per pool: the pool's
        vectors are read once per text, not once per token (one at a time took 88% of the time of --augment)."""
        missing = sorted({t for t in token_ids if t not in self.cache})
        for piece, (pool, vectors) in self.pools.items():
            if not (ids := [t for t in missing if (self.vocab[t] or "").startswith("##") == piece]):
                continue
            top = pool[(self.unit[ids] @ vectors.T).topk(min(self.k + 1, len(pool)), dim=1).indices].tolist()
            for token, row in zip(ids, top, strict=True):
                self.cache[token] = [t for t in row if t != token][: self.k]

    def __call__(self, text: str, n: int, rng: random.Random) -> list[str]:
        ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=512)["input_ids"]
        positions = _word_positions(self.tokenizer, ids)
        if not positions:
            return []
        self.look_up([ids[p] for p in positions])
        out = []
        for _ in range(n):
            new = list(ids)
            for p in _pick(rng, positions, self.fraction):
                if options := self.neighbours(new[p]):
                    new[p] = rng.choice(options)
            out.append(self.tokenizer.decode(new, clean_up_tokenization_spaces=True))
        return out


class MaskedInfilling:
    """Mask a fraction of the words' tokens and sample each from a masked-LM's top-k (never the original)."""

    name = "infill"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, fraction: float = 0.15, k: int = 10):
        if tokenizer.mask_token_id is None:
            raise BortError("the infilling model's tokenizer has no mask token")
        self.model, self.tokenizer, self.fraction, self.k = model.eval(), tokenizer, fraction, k

    @torch.inference_mode()
    def __call__(self, text: str, n: int, rng: random.Random) -> list[str]:
        enc = self.tokenizer(text, truncation=True, max_length=256)["input_ids"]
        positions = _word_positions(self.tokenizer, enc)
        if not positions or n < 1:
            return []
        masks = [_pick(rng, positions, self.fraction) for _ in range(n)]
        batch = torch.tensor([enc] * n)
        for row, chosen in enumerate(masks):
            batch[row, chosen] = self.tokenizer.mask_token_id
        logits = self.model(input_ids=batch.to(next(self.model.parameters()).device)).logits.float().cpu()
        special = list(self.tokenizer.all_special_ids)
        out = []
        for row, chosen in enumerate(masks):
            new = list(enc)
            for p in chosen:
                scores = logits[row, p].clone()
                scores[special + [enc[p]]] = float("-inf")  # never a special token, never the original
                top = scores.topk(self.k)
                weights = torch.softmax(top.values, -1).tolist()
                new[p] = int(top.indices[rng.choices(range(self.k), weights)[0]])
            out.append(self.tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=True))
        return out


class Similarity:
    """Cosine similarity of mean-pooled sentence embeddings from an encoder (the student's own by default)."""

    def __init__(self, encoder: torch.nn.Module, tokenizer: Any, max_seq_len: int = 128):
        self.encoder, self.tokenizer, self.max_seq_len = encoder.eval(), tokenizer, max_seq_len

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        outs = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[i:i + batch_size], truncation=True, max_length=self.max_seq_len,
                                 padding=True, return_tensors="pt").to(device)
            hidden = self.encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            outs.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1).float().cpu())
        return torch.cat(outs) if outs else torch.zeros(0)

    def __call__(self, source: str, candidates: list[str]) -> list[float]:
        vectors = self.embed([source, *candidates])
        return (vectors[1:] @ vectors[0]).tolist()


def load_encoder(source: str | os.PathLike) -> torch.nn.Module:
    """The plain encoder of a model folder (any head is dropped), in eval mode."""
    return io.load_model(source, "base")


def make_transform(name: str, encoder: torch.nn.Module, tokenizer: Any, fraction: float = 0.15,
                   infill_model: str | os.PathLike | None = None, k: int = 8):
    """A transformation by name; `infill` needs a masked-LM folder (`infill_model`)."""
    if name == "neighbour":
        return NeighbourSubstitution(tokenizer, encoder.get_input_embeddings().weight, fraction, k)
    if name == "infill":
        if infill_model is None:
            raise BortError("transform 'infill' needs a masked-LM: pass --infill-model DIR (for example a "
                            "`bort pretrain` output, which keeps its MLM head)")
        config = io.load_config(infill_model)
        if not io.has_mlm_head(config):
            raise BortError(f"--infill-model {infill_model} has no masked-LM head; pass an ...ForMaskedLM model")
        mlm = io.load_model(infill_model, "masked-lm", config)
        return MaskedInfilling(mlm, io.load_tokenizer(infill_model), fraction, max(k, 2))
    raise BortError(f"unknown transform '{name}'; choose one of {', '.join(TRANSFORMS)}")


def neighbours(example: Example, transform, similarity: Similarity, n: int, band: tuple[float, float],
               rng: random.Random, oversample: int = 4) -> list[tuple[Example, str, float]]:
    """Up to n new points near `example`: one segment transformed, similarity to that segment inside the band."""
    segment = rng.choice(["text", "pair"] if example.pair else ["text"])
    original = getattr(example, segment)
    candidates = list(dict.fromkeys(c for c in transform(original, n * oversample, rng) if c and c != original))
    kept = []
    for text, sim in zip(candidates, similarity(original, candidates) if candidates else [], strict=True):
        if band[0] <= sim <= band[1]:
            kept.append((replace(example, **{segment: text}, label=None, idx=None), segment, round(sim, 4)))
        if len(kept) == n:
            break
    return kept


def label_points(labeller: TaskTeacher, rows: list[dict[str, Any]], soft: bool) -> None:
    """The labeller's label of each generated point, and with `soft` its raw outputs (the distillation target)."""
    outputs = labeller.outputs([Example.from_json(row["example"]) for row in rows])
    for row, label, output in zip(rows, labeller.labels_of(outputs), outputs, strict=True):
        row["example"]["label"] = label
        if soft:
            row["soft"] = output.tolist()


def grow(train: list[Example], soft: np.ndarray | None, rows: list[dict[str, Any]]
         ) -> tuple[list[Example], np.ndarray | None]:
    """The train part plus generated points, with their soft targets when the run distils."""
    grown = train + [Example.from_json(row["example"]) for row in rows]
    if soft is None:
        return grown, None
    return grown, np.concatenate([soft, np.asarray([row["soft"] for row in rows], dtype=soft.dtype).reshape(
        (len(rows), *soft.shape[1:]))])


def uniform_points(train: list[Example], n: int, seed: int, transform, similarity: Similarity,
                   band: tuple[float, float], per_point: int, progress: bool = False) -> list[dict[str, Any]]:
    """`n` points made by the transform and band from random train points (not from mistakes): Agora's uniform
    control, which separates what Agora's focus on mistakes buys from what any augmentation buys, and `--augment`."""
    rng, rows = random.Random(seed * 7919 + 1), []
    with io.progress_bar(n, "generate points", progress, unit="point") as bar:
        for _ in range(20 * max(n, 1)):  # points whose neighbours all fall outside the band give nothing
            if len(rows) >= n:
                break
            i = rng.randrange(len(train))
            for new, segment, sim in neighbours(train[i], transform, similarity, min(per_point, n - len(rows)), band,
                                                rng):
                rows.append({"round": None, "source_index": i, "source": train[i].to_json(), "segment": segment,
                             "similarity": sim, "example": new.to_json()})
                bar.update()
    return rows
