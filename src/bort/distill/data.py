"""Corpus -> token ids packed into fixed-length sequences, and BERT-style masking.

Text files and folders are read with any encoding problem replaced, not crashed on. `hf:NAME[:CONFIG]` is a `datasets`
corpus (its train split, streamed; NAME is a hub name or a local dataset folder). With no corpus the default is English
text every installation already has: the documentation topics that ship with Python's standard library (`pydoc_data`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from bort import io
from bort.errors import BortError

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ".tokens", ".raw", ""}
LINES_PER_CALL = 256
DATASET_PREFIX = "hf:"
log = logging.getLogger("bort")


def is_text(path: Path) -> bool:
    """A file is text when its first 8 KiB hold no NUL byte and few control characters (git's and file(1)'s rule): an
    executable, an image or an archive fails it, while prose in any 8-bit encoding passes (it is decoded leniently)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError as exc:
        raise BortError(f"cannot read corpus file {path}: {exc.strerror}; check its permissions") from None
    control = sum(b < 32 and b not in b"\t\n\r\f\b\x1b" or b == 127 for b in head)
    return b"\0" not in head and control <= len(head) // 10


def corpus_files(paths: Iterable[str | os.PathLike], report: bool = False) -> list[Path]:
    """Expand files and folders (recursively, text-like files only) into a sorted, checked file list. A binary file
    named directly is refused; binary files in a folder are skipped (`report` logs their count)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            named = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                           and not p.name.startswith("."))
            found = [p for p in named if is_text(p)]
            if (skipped := len(named) - len(found)) and report:
                log.warning("corpus folder %s: skipped %d binary file(s), e.g. %s", path, skipped,
                            next(p for p in named if p not in found).name)
            if not found:
                raise BortError(f"corpus folder {path} holds no text files (.txt, .md, .rst, .tokens)")
            files.extend(found)
        elif path.is_file():
            if not is_text(path):
                raise BortError(f"corpus file {path} is not text (an executable, image or archive?); pass text files")
            files.append(path)
        else:
            raise BortError(f"corpus path {path} does not exist; pass text files or folders, or hf:NAME for a "
                            "`datasets` corpus")
    return files


def is_dataset(item: str | os.PathLike) -> bool:
    return str(item).startswith(DATASET_PREFIX)


def check_corpus(paths: Iterable[str | os.PathLike] | None) -> None:
    """Fail early, in one line, on a corpus file or folder that is missing (datasets are checked on load)."""
    corpus_files([p for p in paths or [] if not is_dataset(p)], report=True)


def dataset_documents(spec: str) -> Iterator[str]:
    """Rows of a `datasets` corpus 'hf:NAME[:CONFIG]': its train split, streamed, column `text` (or the
    first text column)."""
    try:
        import datasets
    except ImportError:
        raise BortError(f"corpus {spec} needs the datasets library: pip install 'bort[datasets]'") from None
    name, _, config = spec[len(DATASET_PREFIX):].partition(":")
    try:
        rows = iter(datasets.load_dataset(name, config or None, split="train", streaming=True))
        first = next(rows, None)
    except Exception as exc:  # datasets raises many types (network, unknown name, bad config)
        raise BortError(f"cannot load corpus {spec}: {io.reason(exc, 200)}; check the name and config (the hub needs "
                        "the network unless NAME is a local folder)") from None
    if first is None:
        return
    column = "text" if isinstance(first.get("text"), str) else next(
        (k for k, v in first.items() if isinstance(v, str)), None)
    if column is None:
        raise BortError(f"corpus {spec} has no text column (columns: {', '.join(first)})")
    yield from (row[column] for row in itertools.chain([first], rows))


def read_documents(paths: Iterable[str | os.PathLike] | None) -> Iterator[str]:
    """Yield documents: one per file or dataset row (or the default corpus when `paths` is empty)."""
    if not (paths := list(paths or [])):
        from pydoc_data.topics import topics  # Python's documentation: ~465k characters of English prose and examples

        yield from (topics[key] for key in sorted(topics))
        return
    for item in paths:
        if is_dataset(item):
            yield from dataset_documents(str(item))
            continue
        for file in corpus_files([item]):
            try:
                yield file.read_bytes().decode("utf-8", errors="replace")
            except OSError as exc:
                raise BortError(f"cannot read corpus file {file}: {exc.strerror}; check its permissions") from None


def default_text() -> str:
    """The default corpus as one text, for a file that sits beside other corpus files (what `bort run` reads)."""
    return "\n".join(read_documents([]))


def iter_packed_rows(documents: Iterable[str], tokenizer, seq_len: int) -> Iterator[list[int]]:
    """Tokenised documents joined by [SEP] and cut into rows [CLS] ... [SEP] of `seq_len` ids (no padding),
    one at a time, so a corpus larger than memory can be streamed."""
    if seq_len < 8:
        raise BortError(f"sequence length {seq_len} is too short; use at least 8")
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    body = seq_len - 2
    buffer: list[int] = []
    for document in documents:
        lines = [line for line in document.splitlines() if line.strip()]
        for start in range(0, len(lines), LINES_PER_CALL):
            chunk = lines[start:start + LINES_PER_CALL]
            for ids in tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
                buffer.extend(ids)
            while len(buffer) >= body:
                yield [cls_id, *buffer[:body], sep_id]
                buffer = buffer[body:]
        buffer.append(sep_id)


def mask_tokens(input_ids: torch.Tensor, tokenizer, mask_prob: float, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose `mask_prob` of the non-special tokens; of those 80% [MASK], 10% random, 10% kept.
    Returns (masked inputs, labels) with labels -100 where nothing is predicted."""
    candidates = ~torch.isin(input_ids, torch.tensor(sorted(set(tokenizer.all_special_ids))))
    chosen = (torch.rand(input_ids.shape, generator=generator) < mask_prob) & candidates
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    inputs = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    inputs[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    randomise = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[randomise] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[randomise]
    return inputs, labels


def _cache_key(paths: list[str | os.PathLike], tokenizer, seq_len: int, max_sequences: int | None) -> str:
    """Changes whenever the files (path, size, mtime), the tokenizer's vocabulary or the shape change."""
    files = [[str(item)] if is_dataset(item) else
             [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in corpus_files([item])]
             for item in paths] if paths else "pydoc_data"
    vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    spec = {"files": files, "tokenizer": [type(tokenizer).__name__, vocab], "seq_len": seq_len,
            "max_sequences": max_sequences, "format": 2}
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:24]


def cached_sequences(paths: Iterable[str | os.PathLike] | None, tokenizer, seq_len: int,
                     max_sequences: int | None = None, cache_dir: str | os.PathLike | None = None):
    """Packed rows of the corpus as a read-only int32 memory map [rows, seq_len], tokenised only once.

    Rows are streamed to disk as they are produced, so neither tokenising nor training needs the corpus in memory; the
    file is written under a temporary name and renamed when complete, so an interrupted run never leaves a cache that
    looks whole. Returns a numpy memmap (index it, then `torch.from_numpy(...)`)."""
    paths = list(paths or [])
    root = Path(cache_dir or io.cache_root() / "tokens")
    key = _cache_key(paths, tokenizer, seq_len, max_sequences)
    data, meta = root / f"{key}.bin", root / f"{key}.json"
    if not meta.is_file():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BortError(f"cannot create the token cache {root}: {exc.strerror}; set BORT_CACHE") from None
        rows = 0
        with io.replacing(data) as tmp, open(tmp, "wb") as out:  # a corpus failing midway leaves no partial file
            packed = itertools.islice(iter_packed_rows(read_documents(paths), tokenizer, seq_len), max_sequences)
            while chunk := list(itertools.islice(packed, 1024)):
                out.write(np.asarray(chunk, dtype=np.int32).tobytes())
                rows += len(chunk)
            if rows == 0:
                raise BortError(f"the corpus is empty or shorter than one sequence of {seq_len} tokens; pass more text "
                                "with --corpus")
        io.write_json(meta, {"rows": rows, "seq_len": seq_len, "paths": [str(p) for p in paths]})
    return np.memmap(data, dtype=np.int32, mode="r", shape=(io.read_json(meta)["rows"], seq_len))


class BatchPlan:
    """Which rows, with which masks, each micro-step of each process sees: a pure function of the step.

    The rows of optimizer step s are a seeded permutation per epoch over the training rows, sliced into global batches;
    each row's mask is seeded from its global number. So the data a step sees depends only on (seed, s), not on how
    many processes share it, and a resumed run sees what an uninterrupted one saw."""

    def __init__(self, rows, tokenizer, batch_size: int, mask_prob: float, seed: int, eval_rows: int,
                 grad_accum: int = 1):
        if len(rows) < eval_rows + 1:
            raise BortError(f"the corpus gives only {len(rows)} sequences; need more than the {eval_rows} held out "
                            "for evaluation (more text, a shorter --max-seq-len or fewer --eval-sequences)")
        self.rows, self.tokenizer, self.mask_prob, self.seed = rows, tokenizer, mask_prob, seed
        self.batch_size, self.grad_accum, self._epoch, self._perm = batch_size, grad_accum, -1, None
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        self.eval_index, self.train_index = order[:eval_rows], order[eval_rows:]

    def _row(self, g: int) -> int:
        epoch, pos = divmod(g, len(self.train_index))
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            self._perm, self._epoch = torch.randperm(len(self.train_index), generator=generator), epoch
        return int(self.train_index[self._perm[pos]])

    def _masked(self, rows: list[int], keys: list[int], key: object) -> dict[str, object]:
        """Mask each row with a generator seeded by its own key, independent of batch composition."""
        ids = torch.from_numpy(np.stack([np.asarray(self.rows[r]) for r in rows])).long()
        inputs, labels = [], []
        for row, row_key in zip(ids, keys, strict=True):
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + row_key) % 2**62)
            masked, label = mask_tokens(row[None], self.tokenizer, self.mask_prob, generator)
            if not (label != -100).any():  # a short row drew no mask: predict one token so no loss is empty
                position = 1 + int(torch.randint(row.numel() - 2, (1,), generator=generator))
                label[0, position], masked[0, position] = row[position], self.tokenizer.mask_token_id
            inputs.append(masked)
            labels.append(label)
        return {"input_ids": torch.cat(inputs), "labels": torch.cat(labels), "key": key}

    def batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, object]:
        """Rows of step `step`, micro-step `micro`, process `rank`; masks keyed by the global row number."""
        b = self.batch_size
        start = step * b * self.grad_accum * world + (micro * world + rank) * b
        numbers = list(range(start, start + b))
        return self._masked([self._row(g) for g in numbers], numbers, (step, micro, rank, world))

    def eval_batches(self, rank: int, world: int):
        """This process' share of the held-out rows, masked the same way at every evaluation."""
        mine = self.eval_index[rank::world].tolist()
        for start in range(0, len(mine), self.batch_size):
            chunk = mine[start:start + self.batch_size]
            yield self._masked(chunk, [-1 - r for r in chunk], ("eval", rank, world, start))
