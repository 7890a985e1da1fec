"""int8 weight scales, one per tensor vs one per output channel: dev accuracy and latency, side by side.

For each fine-tuned classifier and its labelled dev file, exports the fused fp32 ONNX graph once,
quantizes it both ways, and prints the dev accuracy of PyTorch, fp32 ONNX and both int8 graphs, then
the median latency of the two int8 graphs at batch 1 and 32 x 128 (interleaved, each timed call primed
by an untimed one, as `bort bench` does).

    python benchmarks/bench_int8.py runs/agora-full/teacher/SST-2/plain/seed-0:../shared/data/glue/SST-2/dev.tsv
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer

from bort.speed.export import dev_accuracy, export_module, ort_session, quantize_int8
from bort.speed.models import example_inputs, input_names, resolve

SCALES = {"per-tensor": False, "per-channel": True}


def median_ms(sessions: dict, feed: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for name, session in sessions.items():
            session.run(None, feed)  # prime: the other session evicted this one's weights
            start = time.perf_counter()
            session.run(None, feed)
            times[name].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pairs", nargs="+", metavar="MODEL_DIR:DEV_FILE")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15, help="timed calls per graph at batch 1 (batch 32: a third)")
    args = p.parse_args(argv)
    print(" ".join(["python", *sys.argv]))
    for pair in args.pairs:
        model_dir, dev = pair.rsplit(":", 1)
        spec = resolve(model_dir)
        module = spec.build(head=True)
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_source())
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "model.onnx"
            export_module(module, spec, fp32)
            sessions = {"onnx": ort_session(fp32, args.threads, spinning=False)}
            for name, per_channel in SCALES.items():
                path = quantize_int8(fp32, Path(tmp) / f"{name}.onnx", per_channel=per_channel)
                sessions[name] = ort_session(path, args.threads, spinning=False)
            accuracy = dev_accuracy(module, sessions, spec, tokenizer, dev)["accuracy"]
            print(f"\n{model_dir} on {dev}")
            print("dev accuracy: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in accuracy.items()))
            print("change vs fp32: " + ", ".join(f"{k} {100 * (accuracy[k] - accuracy['onnx']):+.2f}"
                                                 for k in SCALES))
            int8 = {k: sessions[k] for k in SCALES}
            for batch_size, repeats in ((1, args.repeats), (32, max(3, args.repeats // 3))):
                inputs = example_inputs(spec, batch_size, 128)
                feed = {n: inputs[n].numpy() for n in input_names(spec.config)}
                ms = median_ms(int8, feed, repeats)
                print(f"median ms, batch {batch_size} x 128: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
