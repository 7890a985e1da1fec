"""How fast `--augment` (and Agora's uniform control) makes points: `uniform_points` with the neighbour transform, its
nearest-neighbour look-ups batched per text (bort's) against one look-up per token (what bort did before), side by side
in one process, fresh caches each time. Prints points per second, medians over --repeats, and their ratio.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_generate.py --task MRPC --points 300
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bench_student import REPO, machine
from bort import io
from bort.agora.transforms import NeighbourSubstitution, Similarity, load_encoder, uniform_points
from bort.tasks import get_task


class OneAtATime(NeighbourSubstitution):
    """The look-up before batching: one matrix-vector product over the whole pool per new token."""

    def look_up(self, token_ids: list[int]) -> None:
        for token in token_ids:
            if token not in self.cache:
                pool, vectors = self.pools[(self.vocab[token] or "").startswith("##")]
                top = pool[(vectors @ self.unit[token]).topk(min(self.k + 1, len(pool))).indices].tolist()
                self.cache[token] = [t for t in top if t != token][: self.k]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("BORT_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--model", help="whose embeddings and encoder make the points (default: the embedded MiniLM)")
    p.add_argument("--task", default="MRPC")
    p.add_argument("--points", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    source = args.model or io.default_source()
    train = get_task(args.task).load("train", args.data_dir)
    tokenizer, encoder = io.load_tokenizer(source), load_encoder(source)
    similarity, weights = Similarity(encoder, tokenizer), encoder.get_input_embeddings().weight
    rates: dict[str, list[float]] = {"one at a time": [], "batched (bort)": []}
    for repeat in range(args.repeats):
        for name, kind in (("one at a time", OneAtATime), ("batched (bort)", NeighbourSubstitution)):
            transform = kind(tokenizer, weights)  # a fresh cache: every run pays its own look-ups
            start = time.perf_counter()
            made = uniform_points(train, args.points, repeat, transform, similarity, (0.80, 0.98), 1)
            rates[name].append(len(made) / (time.perf_counter() - start))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    print(f"{args.task}, {args.points} points, {source}; {machine()}, {torch.get_num_threads()} thread(s); "
          f"median of {args.repeats}:")
    for name, rate in medians.items():
        print(f"  {name:>15}: {rate:.1f} points/s")
    print(f"  ratio: {medians['batched (bort)'] / medians['one at a time']:.2f}x")


if __name__ == "__main__":
    main()
