"""The `bort` command line: argument parsing and printing only; all work happens in `bort.api`.

Each command has an `add_<name>` function that declares its flags and a `run_<name>` that calls the API.
Errors a user can fix arrive as BortError and are printed as one line with a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bort.errors import BortError


def add_cost(sub) -> None:
    p = sub.add_parser("cost", help="predicted size and cost of one architecture, without training")
    p.add_argument("--family", default="bert", help="network family (default: bert)")
    p.add_argument("--source", help="source model folder, config.json, hub name or preset (bert family)")
    p.add_argument("--arch", required=True, help="comma-separated parameters, e.g. 4,8,1024,768 for D,A,H,I")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--measure", action="store_true", help="also measure median latency on this machine")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_cost)


def run_cost(args) -> None:
    from bort.api import cost

    out = cost(args.arch, family=args.family, source=args.source, batch_size=args.batch_size,
               seq_len=args.seq_len, measure=args.measure, repeats=args.repeats)
    if args.json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        print(f"{key:>17}: {value:,}" if isinstance(value, int) else f"{key:>17}: {value}")


def add_extract(sub) -> None:
    p = sub.add_parser("extract", help="find the optimal sub-architecture of a source model (the FPTAS)")
    p.add_argument("--family", default="bert", help="network family (default: bert)")
    p.add_argument("--source", help="model folder, config.json, hub name or preset (default: embedded MiniLM)")
    p.add_argument("--teacher", help="model that defines the surrogate error (default: the source)")
    p.add_argument("--corpus", action="append",
                   help="text file or folder, or hf:NAME[:CONFIG]; repeatable (default: Python's docs)")
    p.add_argument("--space", default="default", help="'default', 'bort-paper', or a JSON/YAML file")
    p.add_argument("--epsilon", type=float, default=0.2, help="approximation parameter; n(ε) = ceil(8/ε) steps")
    p.add_argument("--steps", type=int, help="override n(ε), the surrogate steps of a finalist")
    p.add_argument("--theta", help="Θ: 'lr=1e-3;lr=3e-3' or a JSON/YAML list (default: those two)")
    p.add_argument("--batch-size", type=int, default=8, help="surrogate training batch size |B|")
    p.add_argument("--seq-len", type=int, default=64, help="surrogate training sequence length")
    p.add_argument("--speed", choices=["ops", "measured"], default="ops", help="i(ξ): operation count or latency")
    p.add_argument("--latency-batch-size", type=int, default=1, help="reference shape of i(ξ)")
    p.add_argument("--latency-seq-len", type=int, default=128, help="reference shape of i(ξ)")
    p.add_argument("--max-params", type=float, help="constraint: total parameters")
    p.add_argument("--max-effective-params", type=float, help="constraint: parameters without embeddings")
    p.add_argument("--max-latency-ms", type=float, help="constraint: measured latency at the reference shape")
    p.add_argument("--no-halving", action="store_true", help="train every candidate for n(ε) (the paper's schedule)")
    p.add_argument("--hidden-loss", choices=["cosine", "mse"], default="cosine",
                   help="hidden-state distance for teachers without an MLM head")
    p.add_argument("--init", choices=["random", "source"], default="random",
                   help="start candidates at random or as slices of the source's weights (needs a source with weights)")
    p.add_argument("--check-factor", type=int, help="approximation check: retrain finalists with this x n(ε)")
    p.add_argument("--output", help="results folder (default: runs/extract-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_extract)


def run_extract(args) -> None:
    from bort.api import extract

    def as_int(value: float | None) -> int | None:
        return None if value is None else int(value)

    extract(source=args.source, teacher=args.teacher, corpus=args.corpus, space=args.space, family=args.family,
            epsilon=args.epsilon, steps=args.steps, thetas=args.theta, batch_size=args.batch_size,
            seq_len=args.seq_len, speed=args.speed, latency_batch_size=args.latency_batch_size,
            latency_seq_len=args.latency_seq_len, max_params=as_int(args.max_params),
            max_effective_params=as_int(args.max_effective_params), max_latency_ms=args.max_latency_ms,
            output=args.output, resume=args.resume, overwrite=args.overwrite, seed=args.seed,
            halving=not args.no_halving, hidden_loss=args.hidden_loss, init=args.init, check_factor=args.check_factor,
            progress=not args.quiet)


def add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="distil a chosen architecture from the teacher (Bort step 2)")
    p.add_argument("--arch", required=True,
                   help="chosen/ folder from `bort extract`, a config.json, or D,A,H,I (cut from --source)")
    p.add_argument("--source", help="model that D,A,H,I and --init source cut from (default: teacher)")
    p.add_argument("--teacher", help="teacher folder or hub name (default: embedded all-MiniLM-L6-v2)")
    p.add_argument("--corpus", nargs="*", default=[],
                   help="text files or folders, or hf:NAME[:CONFIG] for a `datasets` corpus (default: Python's docs)")
    p.add_argument("--output", required=True, help="folder for the model, checkpoints and metrics.jsonl")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32, help="sequences per process per micro-step")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=float, default=0.06, help="fraction of the steps (<1) or steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--mlm-weight", type=float, default=0.1, help="weight of the masked-LM cross-entropy")
    p.add_argument("--kd-weight", type=float, default=0.5, help="weight of T^2 KL (MLM-head teachers)")
    p.add_argument("--hidden-weight", type=float, default=1.0, help="weight of the hidden-state loss")
    p.add_argument("--hidden-loss", choices=("mse", "cosine"), default="mse")
    p.add_argument("--attention-weight", type=float, default=0.0,
                   help="weight of MiniLMv2 attention-relation distillation (0: off)")
    p.add_argument("--init", choices=("random", "source"), default="random",
                   help="random, or slice the source's weights into the student")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-sequences", type=int, default=64, help="held-out sequences for evaluation")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto",
                   help="GPU only; auto = bf16 where supported, else fp16")
    p.add_argument("--max-sequences", type=int, help="use at most this many packed sequences of the corpus")
    p.add_argument("--cache-dir", help="token cache folder (default: $BORT_CACHE/tokens)")
    p.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement for the card")
    p.set_defaults(run=run_pretrain)


def run_pretrain(args) -> None:
    from bort.api import pretrain

    out = pretrain(args.arch, args.output, teacher=args.teacher, corpus=args.corpus, source=args.source,
                   init=args.init, max_steps=args.max_steps, batch_size=args.batch_size,
                   grad_accum=args.grad_accum, max_seq_len=args.max_seq_len, lr=args.lr, warmup=args.warmup,
                   weight_decay=args.weight_decay, mask_prob=args.mask_prob, temperature=args.temperature,
                   mlm_weight=args.mlm_weight, kd_weight=args.kd_weight, hidden_weight=args.hidden_weight,
                   hidden_loss=args.hidden_loss, attention_weight=args.attention_weight,
                   eval_every=args.eval_every, eval_sequences=args.eval_sequences, save_every=args.save_every,
                   log_every=args.log_every, resume=args.resume, seed=args.seed,
                   mixed_precision=args.mixed_precision, max_sequences=args.max_sequences,
                   cache_dir=args.cache_dir, measure_latency=not args.no_latency)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun/accelerate launch, one process reports
        print(f"saved {args.output}: eval {json.dumps(out['eval'])}, {out['tokens_per_s']} tokens/s, "
              f"CPU latency {out['cpu_latency_ms']} ms")


def add_bench(sub) -> None:
    from bort.speed.bench import RUNTIMES

    p = sub.add_parser("bench", help="time several models side by side (runtimes x batch sizes x lengths)")
    p.add_argument("--models", nargs="+", required=True,
                   help="model folders, config.json files, hub names or presets (bert-large, bert-base, "
                        "bort); LABEL=SOURCE names one; ratios are against the first")
    p.add_argument("--runtime", action="append", choices=RUNTIMES, metavar="RUNTIME",
                   help=f"repeatable: {', '.join(RUNTIMES)} (default: torch)")
    p.add_argument("--batch-size", type=int, action="append", help="repeatable (default: 1)")
    p.add_argument("--seq-len", type=int, action="append", help="repeatable (default: 128)")
    p.add_argument("--threads", type=int, help="intra-op threads for every runtime (default: torch's)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per cell (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per cell first (default: 2)")
    p.add_argument("--max-seconds", type=float, help="stop timing a cell after this many seconds (>= 3 runs)")
    p.add_argument("--json", metavar="FILE", help="write the records as a JSON list")
    p.add_argument("--plot", metavar="FILE", help="write a latency plot (png, pdf, svg)")
    p.set_defaults(run=run_bench)


def run_bench(args) -> None:
    from bort.api import bench
    from bort.speed.bench import format_table

    records = bench(args.models, runtimes=args.runtime or ["torch"], batch_sizes=args.batch_size or [1],
                    seq_lens=args.seq_len or [128], threads=args.threads, repeats=args.repeats,
                    warmup=args.warmup, max_seconds=args.max_seconds, json_path=args.json,
                    plot_path=args.plot)
    print(format_table(records))


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX (optionally int8), checked against PyTorch")
    p.add_argument("--model", required=True, help="model folder, config.json, hub name or preset")
    p.add_argument("--format", default="onnx", choices=("onnx",))
    p.add_argument("--quantize", choices=("int8",), help="also write model_int8.onnx (dynamic quantization)")
    p.add_argument("--output", required=True, help="folder for model.onnx, tokenizer and config")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--tolerance", type=float, default=1e-3, help="max abs diff allowed vs PyTorch (fp32)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="keep the dynamo exporter's graph (no onnxruntime BERT fusions)")
    p.add_argument("--dev", metavar="FILE",
                   help="labelled dev file (.tsv/.csv/.jsonl): accuracy of a fine-tuned classifier "
                        "in PyTorch, ONNX and int8")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run_export)


def run_export(args) -> None:
    from bort.api import export

    out = export(args.model, args.output, format=args.format, quantize=args.quantize, opset=args.opset,
                 tolerance=args.tolerance, dev_file=args.dev, fuse=args.fuse)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    sizes = ", ".join(f"{k} {v} MB" for k, v in out["sizes_mb"].items())
    print(f"wrote {', '.join(out['files'].values())} ({sizes})")
    fused = ", ".join(f"{n} {op}" for op, n in out["fused_ops"].items())
    print(f"fused: {fused or 'nothing (unfused graph)'}")
    for key in ("check", "check_int8"):
        if key in out:
            c = out[key]
            print(f"{key}: max abs diff vs PyTorch {c['unpadded']:.2e} unpadded, {c['padded']:.2e} padded "
                  f"(batch x seq {c['shape'][0]} x {c['shape'][1]})")
    print(f"tokenizer: {out['tokenizer'] or 'none found; pass a model folder with tokenizer files'}")
    if "dev" in out:
        accuracy = ", ".join(f"{k} {v:.4f}" for k, v in out["dev"]["accuracy"].items())
        change = f"; int8 change {out['dev']['int8_change']:+.4f}" if "int8_change" in out["dev"] else ""
        print(f"dev accuracy on {out['dev']['examples']} examples: {accuracy}{change}")
    if not out["pretrained_weights"]:
        print("note: the model had no pretrained weights (random initialisation); fine for speed only")


def add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model on a task (GLUE, SuperGLUE, own files), optionally "
                                        "with Agora (Bort step 3)")
    p.add_argument("--model", help="model folder or hub name (default: the embedded MiniLM)")
    p.add_argument("--task", required=True, help="task name (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, "
                                                 "WNLI, BoolQ, CB, COPA, superglue/RTE, WiC, WSC) or a custom name")
    p.add_argument("--data-dir", help="folder in the official layout (glue/<Task>/*.tsv, superglue/<Task>/*.jsonl); "
                                      "default $BORT_DATA_DIR, else the hub")
    p.add_argument("--output", required=True, help="results folder")
    p.add_argument("--train", help="custom task: train file (.csv, .tsv or .jsonl)")
    p.add_argument("--dev", help="custom task: dev file")
    p.add_argument("--test", help="custom task: unlabelled test file")
    p.add_argument("--text-column", default="text", help="custom task: text column")
    p.add_argument("--pair-column", help="custom task: second text column")
    p.add_argument("--label-column", default="label", help="custom task: label column")
    p.add_argument("--kind", choices=("classification", "regression"), default="classification",
                   help="custom task: head kind")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32, help="examples per process per step")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps (<1) or steps")
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--seed", type=int, action="append", help="repeatable: one run per seed (default: 0)")
    p.add_argument("--max-train-samples", type=int, help="random subsample of the train split (same for all seeds)")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --output")
    p.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.add_argument_group("Agora")
    a.add_argument("--agora", action="store_true", help="fine-tune with Agora")
    a.add_argument("--labeller", help="model folder already fine-tuned on the task")
    a.add_argument("--labeller-from", help="model to fine-tune on the task first and use as labeller")
    a.add_argument("--theta", help="Θ grid on top of the flags above, e.g. 'lr=2e-5,5e-5;batch_size=16,32'")
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--samples-per-mistake", type=int, default=4)
    a.add_argument("--band", type=float, nargs=2, default=(0.80, 0.98), metavar=("LOW", "HIGH"),
                   help="keep generated points whose cosine similarity to the source lies in [LOW, HIGH]")
    a.add_argument("--transform", choices=("neighbour", "infill"), default="neighbour",
                   help="embedding nearest-neighbour token substitution, or masked-LM infilling")
    a.add_argument("--replace-fraction", type=float, default=0.15, help="share of word tokens a transform changes")
    a.add_argument("--infill-model", help="masked-LM folder for --transform infill (e.g. a `bort pretrain` output)")
    a.add_argument("--agora-dev-fraction", type=float, default=0.1,
                   help="share of the official train split carved out (stratified) as Agora's dev split")
    a.add_argument("--prune", type=float, default=0.5, help="share of Θ's sets dropped after each round")
    a.add_argument("--max-mistakes", type=int, help="use at most this many mistakes per round")
    a.add_argument("--compare", action="store_true",
                   help="also fine-tune plainly with the same seeds and gradient steps; print both")
    p.set_defaults(run=run_finetune)


def run_finetune(args) -> None:
    from bort.api import agora, finetune
    from bort.tasks.finetune import format_score

    common = dict(data_dir=args.data_dir, seeds=args.seed or [0], epochs=args.epochs, lr=args.lr,
                  batch_size=args.batch_size, weight_decay=args.weight_decay, warmup=args.warmup,
                  max_seq_len=args.max_seq_len, max_train_samples=args.max_train_samples, resume=args.resume,
                  overwrite=args.overwrite, save_every=args.save_every, measure_latency=not args.no_latency,
                  progress=not args.quiet)
    if args.train:
        common.update(train_file=args.train, dev_file=args.dev, test_file=args.test, text_column=args.text_column,
                      pair_column=args.pair_column, label_column=args.label_column, kind=args.kind)
    if args.agora:
        out = agora(args.model, args.task, args.output, labeller=args.labeller, labeller_from=args.labeller_from,
                    theta=args.theta, rounds=args.rounds, samples_per_mistake=args.samples_per_mistake,
                    band=tuple(args.band), transform=args.transform, replace_fraction=args.replace_fraction,
                    infill_model=args.infill_model, agora_dev_fraction=args.agora_dev_fraction, prune=args.prune,
                    max_mistakes=args.max_mistakes, compare=args.compare, **common)
    else:
        out = finetune(args.model, args.task, args.output, max_steps=args.max_steps, **common)
    if not out:
        return  # not the reporting process
    methods = [m for m in ("plain", "agora") if m in out]
    print(f"{out['task']} (official dev, mean ± std over seeds {', '.join(out[methods[0]]['seeds'])}):")
    for metric in out[methods[0]]["mean"]:
        print(f"  {metric:>22}: " + "   ".join(f"{m} {format_score(out[m], metric)}" for m in methods))
    if out.get("labeller_dev"):
        print(f"  labeller: {json.dumps({k: round(v, 4) for k, v in out['labeller_dev'].items()})}")
    if "cpu_latency_ms" in out:
        print(f"  CPU latency (batch 1, seq 128): {out['cpu_latency_ms']} ms")
    print(f"results in {args.output}/metrics.json")


COMMANDS = [add_cost, add_extract, add_pretrain, add_bench, add_export, add_finetune]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bort", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # bort's own bars say what is going on
    try:
        args.run(args)
    except BortError as exc:
        print(f"bort {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bort {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
