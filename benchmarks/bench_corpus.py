"""Which corpus should general distillation read? The same student pre-trained on three corpora, then fine-tuned.

bench_student's student was distilled from MiniLM on bort's default corpus, Python's documentation (1,017 packed
sequences of 128 tokens, so 4,000 steps of batch 16 are 63 passes over it). Neither the longer recipe nor teacher-
labelled augmentation brought it near its teacher on STS-B or CoLA (RESULTS.md). This asks whether the corpus does:
- `pydoc`: the default, pre-trained again here (bench_student's student is this run, same settings, so RESULTS.md
  compares against it instead of training it twice);
- `prose`: the public-domain English of `../shared/data/text` (Gutenberg books, presidential addresses, WikiText-2);
- `tasks`: the unlabelled sentences of the train splits of the seven tasks (CoLA, SST-2, MRPC, STS-B, RTE, CB, COPA),
  one per line, each once: the text a task student meets. No dev or test text is read;
- a task's name (`STS-B`): that task's train text alone, what `bort run` has at hand; `STS-B+pydoc`: with the default.
Each student is `bort pretrain --init source` of the same architecture, seed and steps. Then fine-tune each with
bench_recipe.py (`--student <output>/<corpus>/student`), whose record names the student beside the recipe.

    python benchmarks/bench_corpus.py --output /root/bort-runs/bench-corpus --corpora tasks prose
    python benchmarks/bench_corpus.py --output /root/bort-runs/bench-corpus --corpora STS-B STS-B+pydoc
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
from pathlib import Path

import bort
from bench_student import ALL_TASKS, REPO
from bort import io
from bort.distill.data import default_text
from bort.tasks import get_task
from bort.tasks.registry import unlabelled_text


def task_text(data_dir: str, path: Path, tasks: tuple[str, ...] = ALL_TASKS) -> Path:
    """The train splits' sentences (texts, pairs, choices), one per line, each once, in a stable order."""
    if not path.is_file():
        io.write_text(path, unlabelled_text(itertools.chain.from_iterable(
            get_task(name).load("train", data_dir) for name in tasks)))
    return path


def corpus(name: str, data_dir: str, out: Path) -> list[str]:
    """The files of a corpus named on the command line ([] is bort's default, Python's documentation)."""
    base, _, extra = name.partition("+")
    if name == "pydoc":
        return []
    if extra not in ("", "pydoc") or base not in ("prose", "tasks", *ALL_TASKS):
        raise SystemExit(f"corpus '{name}': use pydoc, prose, tasks or a task's name ({', '.join(ALL_TASKS)}), "
                         "optionally followed by +pydoc")
    files = ([str(Path(data_dir) / "text")] if base == "prose" else
             [str(task_text(data_dir, out / "task-train-text.txt"))] if base == "tasks" else
             [str(task_text(data_dir, out / f"{base}-train-text.txt", (base,)))])
    if extra:  # bort's default corpus as a file beside the others (bort reads it only when no corpus is given)
        if not (pydoc := out / "pydoc.txt").is_file():  # written once: the token cache is keyed by mtime
            io.write_text(pydoc, default_text())
        files.append(str(pydoc))
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("BORT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--output", default=str(REPO / "runs" / "bench-corpus"))
    p.add_argument("--corpora", nargs="+", default=["tasks", "prose"],
                   help="pydoc, prose, tasks, or a task's name (its train text), optionally +pydoc (with the default)")
    p.add_argument("--arch", default="2,12,384,384", help="bench_student's student by default")
    p.add_argument("--steps", type=int, default=4000)
    args = p.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("bort").setLevel(logging.INFO)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.corpora:
        folder = out / name / "student"
        if not (folder / "model.safetensors").is_file():
            bort.pretrain(args.arch, str(folder), init="source", corpus=corpus(name, args.data_dir, out),
                          max_steps=args.steps, batch_size=16, max_seq_len=128, resume=folder.exists(), progress=False)
        summary = json.loads((folder / "pretrain.json").read_text())
        print(f"{name}: {summary['sequences']} sequences, {summary['steps']} steps, held-out loss "
              f"{summary['eval']['loss']:.4f}, {summary['seconds'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
