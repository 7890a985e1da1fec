"""Benchmark `bort pretrain`: throughput against a plain Hugging Face Trainer, and quality in a CPU budget.

1. Throughput (one process, same thread count, same student, same packed rows, same batch shape):
   a plain `transformers.Trainer` masked-LM run of the student, against `bort pretrain` with the MiniLM
   teacher live in the loop (the teacher's forward pass is paid every step). Target: >= 80%.
2. Quality in a fixed CPU budget: the same number of distillation steps (what the budget buys at the
   measured rate) from random init and from source init (sliced MiniLM weights); held-out hidden-state
   loss and cosine similarity to the teacher, as curves (PNG) and a table.

    python benchmarks/bench_pretrain.py --quick          # a few minutes on 2 cores
    python benchmarks/bench_pretrain.py --budget-s 1800  # the issue's 30-minute budget per init
    python benchmarks/bench_pretrain.py --throughput-only  # only part 1 (re-measure tokens/s quickly)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import bort
from bort.distill.data import cached_sequences
from bort.distill.pretrain import resolve_arch
from bort.io import default_source, load_tokenizer

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"


def hf_trainer_tokens_per_s(arch: str, rows: torch.Tensor, batch_size: int, steps: int, lr: float) -> float:
    """Tokens/s of a stock Trainer MLM run of the student (first step excluded, as for bort)."""
    from transformers import (
        AutoModelForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = load_tokenizer(default_source())
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(resolve_arch(arch, None))
    data = [{"input_ids": row} for row in rows]
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=steps,
                                 learning_rate=lr, report_to=[], save_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, dataloader_num_workers=0,
                                 use_cpu=not torch.cuda.is_available())
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator, callbacks=[Clock()])
        trainer.train()
    return (len(stamps) - 1) * batch_size * rows.shape[1] / (stamps[-1] - stamps[0])


def eval_curve(output: Path) -> list[dict]:
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == "eval"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="3,6,192,384", help="student (D,A,H,I from MiniLM, or a chosen/ folder)")
    p.add_argument("--corpus", nargs="*", default=[str(SHARED_TEXT)] if SHARED_TEXT.is_dir() else [])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--throughput-steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds; the best counts")
    p.add_argument("--budget-s", type=float, default=1800, help="CPU seconds of distillation per init")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-sequences", type=int, default=64)
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "bort-bench-pretrain"))
    p.add_argument("--quick", action="store_true", help="small shapes and a 30 s budget: a smoke benchmark")
    p.add_argument("--throughput-only", action="store_true", help="only part 1, the tokens/s comparison")
    a = p.parse_args()
    if a.quick:  # new defaults; flags given explicitly still win
        p.set_defaults(seq_len=64, batch_size=8, throughput_steps=12, budget_s=30, eval_sequences=32)
        a = p.parse_args()
    if a.throughput_steps < 2:
        p.error("--throughput-steps must be at least 2 (the first step is not timed)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"threads {torch.get_num_threads()}, arch {a.arch}, batch {a.batch_size} x {a.seq_len}, "
          f"corpus {a.corpus or 'pydoc_data'}")
    common = dict(corpus=a.corpus, max_seq_len=a.seq_len, batch_size=a.batch_size, lr=a.lr, save_every=0,
                  measure_latency=False, eval_sequences=a.eval_sequences)

    tokenizer = load_tokenizer(default_source())
    needed = a.batch_size * (a.throughput_steps + 1)
    rows = torch.from_numpy(cached_sequences(a.corpus, tokenizer, a.seq_len)[:needed].copy()).long()
    # Alternate the two runs and keep each one's best round: on a shared machine, load that comes and
    # goes then penalises neither side more than the other.
    plains, distils = [], []
    for _ in range(a.rounds):
        plains.append(hf_trainer_tokens_per_s(a.arch, rows, a.batch_size, a.throughput_steps, a.lr))
        with tempfile.TemporaryDirectory() as tmp:
            # a new folder each round: bort refuses to write into a non-empty one
            run = bort.pretrain(a.arch, str(Path(tmp) / "t"), max_steps=a.throughput_steps, eval_every=0,
                                **common)
            distils.append(run.tokens_per_s)
    plain, distil = max(plains), max(distils)
    print(f"rounds: plain {[round(x) for x in plains]}, distil {[round(x) for x in distils]}")
    ratio = distil / plain
    print("\n| run | tokens/s |\n|---|---|")
    print(f"| HF Trainer, masked LM, student only | {plain:,.0f} |")
    print(f"| bort pretrain, MiniLM teacher live in the loop | {distil:,.0f} ({ratio:.0%} of plain) |")
    if a.throughput_only:  # its own file: a full run's results.json (with the curves) stays
        (out / "throughput.json").write_text(json.dumps({"args": vars(a), "plain_tokens_per_s": plain,
                                                         "plain_rounds": plains, "distil_tokens_per_s": distil,
                                                         "distil_rounds": distils}, indent=1))
        print(f"\ndata: {out / 'throughput.json'}")
        return

    step_s = a.batch_size * a.seq_len / distil
    steps = max(10, int(a.budget_s / step_s))
    every = max(1, steps // 8)
    print(f"\nquality: {steps} steps per init (~{a.budget_s:.0f} s at {step_s:.2f} s/step), "
          f"eval every {every}")
    curves, final = {}, {}
    for init in ("random", "source"):
        run = out / f"init-{init}"
        t0 = time.perf_counter()
        # overwrite=True: a rerun replaces the folder an earlier run of this script wrote
        result = bort.pretrain(a.arch, str(run), init=init, max_steps=steps, eval_every=every, log_every=every,
                               overwrite=True, **common)
        curves[init], final[init] = eval_curve(run), {**result.eval, "wall_s": time.perf_counter() - t0}
    print("\n| init | step 0 hidden loss | final hidden loss | step 0 cosine | final cosine | final MLM CE |"
          " wall s |\n|---|---|---|---|---|---|---|")
    for init in curves:
        first, last = curves[init][0], curves[init][-1]
        print(f"| {init} | {first['hidden']:.3f} | {last['hidden']:.3f} | {first['cosine']:.3f} | "
              f"{last['cosine']:.3f} | {last.get('mlm', float('nan')):.3f} | {final[init]['wall_s']:.0f} |")
    (out / "results.json").write_text(json.dumps({"args": vars(a), "plain_tokens_per_s": plain,
                                                  "distil_tokens_per_s": distil,
                                                  "curves": curves, "final": final}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for init, curve in curves.items():
            axes[0].plot([r["step"] for r in curve], [r["hidden"] for r in curve], marker="o", label=init)
            axes[1].plot([r["step"] for r in curve], [r["cosine"] for r in curve], marker="o", label=init)
        axes[0].set(xlabel="step", ylabel="held-out hidden-state loss (FVU)", yscale="log")
        axes[1].set(xlabel="step", ylabel="cosine similarity to teacher")
        for ax in axes:
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=120)
        print(f"\ncurves: {out / 'curves.png'}; data: {out / 'results.json'}")
    except ImportError:
        print(f"\n(matplotlib missing: no plot) data: {out / 'results.json'}")


if __name__ == "__main__":
    main()
