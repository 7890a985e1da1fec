"""`bort bench` and `bort export` on tiny configs: export numerics, the benchmark's records, bad input."""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from bort import bench, export
from bort.cli import main
from bort.config import BenchConfig
from bort.errors import BortError
from bort.speed.bench import format_table

pytest.importorskip("onnxruntime")

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64)


def _config(folder, **overrides) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    BertConfig(**{**TINY, **overrides}).save_pretrained(str(folder))
    return str(folder / "config.json")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return export(_config(root / "tiny"), root / "onnx", quantize="int8", threads=1).report


def test_export_matches_pytorch_padded_and_unpadded(exported):
    check = exported["check"]
    assert check["unpadded"] < 1e-4 and check["padded"] < 1e-4
    assert exported["check_int8"]["max_abs_diff"] > 0  # int8 is reported, not hidden
    assert exported["check_int8"]["padded_cosine"] > 0.99
    assert exported["sizes_mb"]["onnx_int8"] < exported["sizes_mb"]["onnx"]


def test_exported_folder_runs_with_onnxruntime_alone(exported):
    """The README recipe: tokenizer + onnxruntime, any batch and length (dynamic axes)."""
    import onnxruntime as ort

    folder = exported["output"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    session = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
    texts = ["a short one", "a noticeably longer sentence that forces padding of the first", "third"]
    batch = tokenizer(texts, padding=True, return_tensors="np")
    hidden, pooled = session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})
    assert hidden.shape[:2] == batch["input_ids"].shape and pooled.shape == (3, TINY["hidden_size"])
    report = json.loads((Path(folder) / "export_report.json").read_text())
    assert report["check"] == exported["check"] and report["model"] == "tiny"


def test_export_keeps_classification_head_and_measures_dev_accuracy(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(**TINY, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    BertForSequenceClassification(config).save_pretrained(str(tmp_path / "clf"))
    words = ["good", "bad", "fine", "awful", "great", "poor", "nice", "dull"]
    rows = [f"{' '.join(words[(i * 3 + j) % 8] for j in range(1 + i % 7))}\t{('neg', 'pos', 1)[i % 3]}"
            for i in range(40)]
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    out = export(tmp_path / "clf", tmp_path / "onnx", quantize="int8", threads=1,
                 dev_file=str(tmp_path / "dev.tsv")).report
    assert out["outputs"] == ["logits"] and out["pretrained_weights"]
    assert out["check"]["max_abs_diff"] < 1e-4 and out["check"]["padded_argmax_agreement"] == 1.0
    dev = out["dev"]
    assert dev["examples"] == 40 and set(dev["accuracy"]) == {"torch", "onnx", "onnx_int8"}
    assert dev["accuracy"]["onnx"] == dev["accuracy"]["torch"]  # fp32 ONNX makes the same decisions
    assert dev["int8_change"] == dev["accuracy"]["onnx_int8"] - dev["accuracy"]["onnx"]
    with pytest.raises(BortError, match="sequence-classification head"):
        export(_config(tmp_path / "bare"), tmp_path / "x", dev_file=str(tmp_path / "dev.tsv"))


def test_bench_tiny_configs(tmp_path):
    small = _config(tmp_path / "small")
    wide = _config(tmp_path / "wide", hidden_size=64, intermediate_size=128)
    records = bench([f"first={small}", wide], runtimes=["torch", "onnx", "onnx-int8"], batch_sizes=[1, 2],
                    seq_lens=[8], threads=1, repeats=2, warmup_runs=1, json_path=tmp_path / "r.json",
                    plot=str(tmp_path / "r.png"), progress=False).records
    assert len(records) == 2 * 3 * 2
    assert json.loads((tmp_path / "r.json").read_text()) == records and (tmp_path / "r.png").stat().st_size
    for r in records:
        for key in ("model", "runtime", "batch_size", "seq_len", "median_ms", "p90_ms", "params",
                    "effective_params", "ops", "gflops", "peak_fraction"):
            assert r[key] is not None, key
        assert r["p90_ms"] >= r["median_ms"] > 0 and r["peak_fraction"] > 0 and r["runs"] == 2
        assert len(r["load_average"]) == 2 and r["threads"] == 1
    first = [r for r in records if r["model"] == "first"]
    assert all(r["speedup"] == 1.0 and r["params_ratio"] == 1.0 for r in first)
    wide_rec = next(r for r in records if r["model"] == "wide")
    assert wide_rec["params"] > first[0]["params"] and wide_rec["ops_ratio"] > 1
    assert "first" in format_table(records) and "GEMM peak" in format_table(records)


@pytest.mark.parametrize("prime_below_ms, calls_expected", [(1000.0, 1 + 2 * 3), (0.0, 1 + 3)])
def test_bench_primes_short_calls_before_timing(monkeypatch, tmp_path, prime_below_ms, calls_expected):
    """A short call gets an untimed call of its own cell first, so it is not timed on the caches of another."""
    import bort.speed.bench as speed_bench
    from bort.speed import latency

    counted = []
    original = speed_bench._call

    def counting_call(*args):
        run = original(*args)
        return lambda: counted.append(1) or run()

    monkeypatch.setattr(speed_bench, "_call", counting_call)
    monkeypatch.setattr(latency, "PRIME_BELOW_MS", prime_below_ms)
    records = bench([_config(tmp_path / "p")], seq_lens=[8], threads=1, repeats=3, warmup_runs=1,
                    progress=False).records
    assert len(counted) == calls_expected and records[0]["runs"] == 3


@pytest.mark.slow
def test_bench_compile_runtime_compiles_every_model_and_shape(tmp_path):
    """9 graphs of one `forward` exceed dynamo's default limit of 8, past which it would silently run eager."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    models = [_config(tmp_path / f"c{i}", intermediate_size=64 * i) for i in (1, 2, 3)]
    records = bench(models, runtimes=["compile"], seq_lens=[8, 12, 16], threads=1, repeats=1, warmup_runs=1,
                    progress=False).records
    assert len(records) == 9 and all(r["median_ms"] > 0 and "error" not in r for r in records)
    assert counters["stats"]["unique_graphs"] - before >= 9


def test_unknown_runtime_and_preset(monkeypatch):
    with pytest.raises(BortError, match="--runtime must be one of torch, compile.*not 'tpu'"):
        bench(["bort"], runtimes=["tpu"])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(BortError, match="preset"):
        bench(["bert-huge"])
    assert main(["bench", "--models", "bert-huge"]) == 2
    runtimes = BenchConfig.__dataclass_fields__["runtimes"].metadata["choices"]
    assert set(runtimes) == {"torch", "compile", "onnx", "onnx-int8", "onnx-unfused", "onnx-unfused-int8"}


def test_missing_onnxruntime_gives_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(BortError, match=r"pip install 'bort\[onnx\]'"):
        export("bort", tmp_path)
    with pytest.raises(BortError, match="onnxruntime"):
        bench(["bort"], runtimes=["onnx"])
    assert main(["export", "--model", "bort", "--output", str(tmp_path)]) == 2
    assert "bort[onnx]" in capsys.readouterr().err


def test_sequence_longer_than_positions(tmp_path):
    with pytest.raises(BortError, match="exceeds the maximum"):
        bench([_config(tmp_path / "t")], seq_lens=[65])


def test_cli_export_prints_the_check(tmp_path, capsys):
    assert main(["export", "--model", _config(tmp_path / "cli"), "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "max abs diff vs PyTorch" in printed and "random initialisation" in printed
    assert (tmp_path / "out" / "model.onnx").is_file() and (tmp_path / "out" / "tokenizer.json").is_file()


def test_bert_export_is_fused_and_unfused_on_request(exported, tmp_path):
    """One Attention op per layer (what makes the graph fast on CPU); --no-fuse keeps the plain graph."""
    assert exported["fused_ops"]["Attention"] == TINY["num_hidden_layers"]
    assert exported["fused_ops"]["SkipLayerNormalization"] == 2 * TINY["num_hidden_layers"]
    plain = export(_config(tmp_path / "tiny"), tmp_path / "plain", threads=1, fuse=False).report
    assert plain["fused_ops"] == {} and plain["check"]["max_abs_diff"] < 1e-4


def test_fused_export_leaves_the_callers_attention_alone(tmp_path):
    from bort.speed.export import export_module
    from bort.speed.models import resolve

    spec = resolve(_config(tmp_path / "tiny"))
    module = spec.build()
    before = module.config._attn_implementation
    assert export_module(module, spec, tmp_path / "m.onnx")["Attention"] == TINY["num_hidden_layers"]
    assert module.config._attn_implementation == before


def test_built_models_do_not_share_a_config(tmp_path):
    from bort.speed.models import resolve

    spec = resolve(_config(tmp_path / "tiny"))
    first, second = spec.build(), spec.build()
    first.set_attn_implementation("eager")
    assert second.config._attn_implementation != "eager" and spec.config._attn_implementation != "eager"


@pytest.mark.parametrize("others,kept", [(0.0, True), (8.0, False)])
def test_latency_measured_beside_other_jobs_is_not_cached(tmp_path, monkeypatch, others, kept):

    from bort.families import get_family
    from bort.speed import latency

    @contextlib.contextmanager
    def load():
        yield [others]  # cores other processes kept busy while timing

    monkeypatch.setattr(latency, "others_load", load)
    cache = latency.LatencyCache(tmp_path / "latency.json")
    mlp = get_family("mlp")
    assert cache.measure(mlp, mlp.maximum(), repeats=2) > 0
    assert bool(latency.LatencyCache(tmp_path / "latency.json").entries) == kept


def test_side_by_side_times_each_architecture_interleaved(monkeypatch):
    """The source and a sixth of its depth and width, timed in alternation: each gets its own median, and the
    smaller is faster. The rounds rotate which model runs first."""
    from bort.families import BertFamily
    from bort.speed import latency

    assert latency.interleaved(3, 0) == [0, 1, 2] and latency.interleaved(3, 1) == [1, 2, 0]
    family = BertFamily(BertConfig(**{**TINY, "hidden_size": 192, "num_hidden_layers": 6, "num_attention_heads": 6,
                                      "intermediate_size": 768, "max_position_embeddings": 128}))
    source_ms, small_ms = latency.side_by_side(family, [family.maximum(), (1, 6, 96, 96)], 1, 64, repeats=8)
    assert len(source_ms) == len(small_ms) == 8 and min(small_ms) > 0
    assert statistics.median(source_ms) > 2 * statistics.median(small_ms)
    ratios = [s / m for s, m in zip(source_ms, small_ms, strict=True)]
    assert latency.median_bound(ratios, 0.05) <= statistics.median(ratios) <= latency.median_bound(ratios, 0.95)


def test_latency_is_timed_in_the_runtime_a_user_deploys(tmp_path, monkeypatch):
    """--latency-runtime onnx-int8 times the int8 ONNX Runtime session `bort export` ships, side by side and in the
    search's cache, under its own key: a 4x target in eager PyTorch was 3.4x in int8 (RESULTS.md)."""
    from bort.families import BertFamily
    from bort.speed import latency

    family = BertFamily(BertConfig(**{**TINY, "hidden_size": 192, "num_hidden_layers": 6, "num_attention_heads": 6,
                                      "intermediate_size": 768, "max_position_embeddings": 128}))
    source_ms, small_ms = latency.side_by_side(family, [family.maximum(), (1, 6, 96, 96)], 1, 64, repeats=8,
                                               runtime="onnx-int8")
    assert len(source_ms) == len(small_ms) == 8 and statistics.median(source_ms) > 2 * statistics.median(small_ms)
    monkeypatch.setattr(latency, "others_load", lambda: contextlib.nullcontext([0.0]))  # as on a quiet machine
    cache = latency.LatencyCache(tmp_path / "latency.json")
    eager, int8 = (cache.measure(family, (1, 6, 96, 96), 1, 64, repeats=3, runtime=r) for r in ("torch", "onnx-int8"))
    assert eager > 0 and int8 > 0 and len(cache.entries) == 2
    assert sorted(r for key in cache.entries for r in ("| onnx-int8 onnxruntime ", "| torch-eager |") if r in key) == [
        "| onnx-int8 onnxruntime ", "| torch-eager |"]
